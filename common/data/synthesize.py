"""Write a site's synthetic data in a real file layout (``data.synthesize: true``), once.

The data are written to a temporary folder and renamed into place, so a reader never sees
half-written data and two processes that synthesize the same site at once both end up
reading one complete copy. A manifest records the settings; a root written with other
settings is refused instead of silently reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from common.data.errors import DataError
from common.data.synthetic_files import make_xray_patients, write_dicom_folders, write_kermany, write_medmnist
from common.data.synthetic_volumes import make_ct_cases, write_brats, write_msd

log = logging.getLogger(__name__)

MANIFEST = "privmed_synthetic.json"
XRAY_FORMATS = ("kermany", "medmnist", "dicom_folders")
CT_FORMATS = ("msd", "brats")
# Cases generated at once: bounds the generator's memory for large sites.
CT_CHUNK = 200


def synthetic_settings(task: DictConfig, data: DictConfig) -> dict:
    """Everything the written files depend on (the manifest)."""
    keys = ("format", "num_train", "num_test", "seed", "positive_fraction", "lesion_fraction",
            "intensity_shift", "intensity_scale", "classes", "modalities")
    site = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v := data.get(k)) else v for k in keys}
    return {"task": task.name, "file_size": task.synthetic.file_size,
            "synthetic": OmegaConf.to_container(task.synthetic, resolve=True), **site}


def ensure_synthetic(root: Path, *, task: DictConfig, data: DictConfig) -> bool:
    """Write synthetic data at ``root`` unless already there; True when this call wrote it.

    Raises
    ------
    DataError
        If ``root`` exists but holds no synthetic data, or data made with other settings.
    """
    settings = synthetic_settings(task, data)
    if root.exists():
        _check_manifest(root, settings)
        return False
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_synthetic(tmp, task=task, data=data)
        (tmp / MANIFEST).write_text(json.dumps(settings, indent=2, sort_keys=True))
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():
                raise
            _check_manifest(root, settings)  # another process finished first: use its copy
            return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote synthetic %s data to %s", data.format, root)
    return True


def _check_manifest(root: Path, settings: dict) -> None:
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(root, "data.root exists and holds no privmed synthetic data; set data.synthesize: false "
                              "to read it as real data, or point data.root elsewhere")
    found = json.loads(path.read_text())
    if found != json.loads(json.dumps(settings)):
        changed = sorted(k for k in set(found) | set(settings) if found.get(k) != json.loads(json.dumps(settings)).get(k))
        raise DataError(root, f"holds synthetic data made with other settings ({', '.join(changed)}); "
                              "delete it or point data.root elsewhere")


def write_synthetic(root: Path, *, task: DictConfig, data: DictConfig) -> None:
    """Generate the site's synthetic patients and write them in ``data.format``'s layout."""
    syn, fmt = task.synthetic, data.format
    shift = dict(intensity_shift=data.intensity_shift, intensity_scale=data.intensity_scale, noise_std=syn.noise_std)
    if fmt in XRAY_FORMATS and task.name == "classification":
        patients = make_xray_patients(
            num_train=data.num_train, num_test=data.num_test, val_fraction=syn.val_fraction,
            images_per_patient=tuple(syn.images_per_patient), image_size=syn.file_size,
            positive_fraction=data.positive_fraction, label_noise=syn.label_noise,
            pixel_window=tuple(syn.pixel_window), seed=data.seed, **shift,
        )
        if fmt == "kermany":
            write_kermany(root, patients, classes=list(data.classes), jpeg_quality=syn.jpeg_quality)
        elif fmt == "medmnist":
            write_medmnist(root / "synthmnist.npz", patients)
        else:
            write_dicom_folders(root, patients, classes=list(data.classes))
    elif fmt in CT_FORMATS and task.name == "segmentation":
        n = data.num_train + data.num_test
        parts = [
            make_ct_cases(
                min(CT_CHUNK, n - start), slices=syn.slices_per_patient, image_size=syn.file_size,
                lesion_fraction=data.lesion_fraction, hu_scale=syn.hu_scale, hu_offset=syn.hu_offset,
                seed=data.seed * 1000 + start // CT_CHUNK, **shift,
            )
            for start in range(0, n, CT_CHUNK)
        ]
        images, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if fmt == "msd":
            write_msd(root, images, labels)
        else:
            write_brats(root, images, labels, modalities=list(data.modalities))
    else:
        raise ValueError(
            f"no synthetic {task.name} data in format {fmt!r}: classification writes {XRAY_FORMATS}, "
            f"segmentation writes {CT_FORMATS}"
        )
