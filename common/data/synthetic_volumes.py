"""Synthetic CT cases written as NIfTI in real layouts (Medical Segmentation Decathlon, BraTS).

Values are stored as integer Hounsfield-like units (``value * hu_scale + hu_offset``), as
scanners store them, so the reader's windowing from config is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from common.data.synthetic_ct import LESION, LIVER, make_ct_volumes

# Raw BraTS label values written for the synthetic liver and lesion (oedema, enhancing tumour).
BRATS_OF = {LIVER: 2, LESION: 4}


def make_ct_cases(
    n: int, *, slices: int, image_size: int, lesion_fraction: float, intensity_shift: float,
    intensity_scale: float, noise_std: float, hu_scale: float, hu_offset: float, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` volumes as int16 ``[n, S, S, D]`` (NIfTI's x, y, z order) and uint8 labels of the same shape."""
    images, labels = make_ct_volumes(
        n, slices=slices, image_size=image_size, lesion_fraction=lesion_fraction,
        intensity_shift=intensity_shift, intensity_scale=intensity_scale, noise_std=noise_std, seed=seed,
    )
    hu = np.rint(images * hu_scale + hu_offset).astype(np.int16)
    return np.moveaxis(hu, 1, -1), np.moveaxis(labels, 1, -1).astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine=np.eye(4)), path)


def write_msd(root: Path, images: np.ndarray, labels: np.ndarray, *, task_name: str = "Task03_Liver") -> None:
    """``<root>/dataset.json``, ``imagesTr/liver_<i>.nii.gz``, ``labelsTr/liver_<i>.nii.gz``."""
    training = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = f"liver_{i}.nii.gz"
        _save(image, root / "imagesTr" / name)
        _save(label, root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": task_name, "description": "privmed synthetic liver CT", "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": len(training), "numTest": 0, "training": training, "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))


def write_brats(root: Path, images: np.ndarray, labels: np.ndarray, *, modalities: list[str]) -> None:
    """``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with BraTS label values 0, 2, 4."""
    raw = np.zeros_like(labels)
    for ours, theirs in BRATS_OF.items():
        raw[labels == ours] = theirs
    for i, (image, label) in enumerate(zip(images, raw)):
        case = f"BraTS20_Training_{i + 1:03d}"
        for k, modality in enumerate(modalities):
            # Each sequence shows the same anatomy with its own contrast.
            _save((image * (1.0 + 0.1 * k)).astype(np.int16), root / case / f"{case}_{modality}.nii.gz")
        _save(label, root / case / f"{case}_seg.nii.gz")
