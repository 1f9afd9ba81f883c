"""BraTS cases: one folder per case (= one patient) with t1, t1ce, t2, flair and seg NIfTI files.

``<root>/<case>/<case>_<modality>.nii.gz`` (BraTS 2018-2021 naming). The model sees one
modality (``data.modality``); the others must be present so that a half-copied case is
caught. Labels 0, 1 (necrotic core), 2 (oedema), 4 (enhancing tumour) are mapped with
``data.label_map`` (e.g. whole tumour: 1, 2, 4 -> 1).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from common.data.class_folders import find_split_root, visible
from common.data.errors import BadFiles, DataError
from common.data.patients import Sample
from common.data.volume_slices import case_samples, load_nifti


def case_file(case: Path, suffix: str) -> Path:
    """``<case>/<case>_<suffix>.nii[.gz]``; the ``.nii.gz`` path when neither exists."""
    for ext in (".nii.gz", ".nii"):
        path = case / f"{case.name}_{suffix}{ext}"
        if path.is_file():
            return path
    return case / f"{case.name}_{suffix}.nii.gz"


def read_brats(root: Path, *, task: DictConfig, data: DictConfig, bad: BadFiles) -> list[Sample]:
    """Every case folder's slices of ``data.modality``, labelled by its ``seg`` file."""
    modalities, modality = list(data.modalities), str(data.modality)
    if modality not in modalities:
        raise ValueError(f"data.modality must be one of {modalities}, got {modality!r}")
    base = find_split_root(root)
    cases = [p for p in visible(base) if p.is_dir()]
    if not cases:
        raise DataError(base, "no case folders (BraTS layout: <root>/<case>/<case>_flair.nii.gz ...)")
    samples: list[Sample] = []
    for case in cases:
        try:
            for m in modalities:
                if not case_file(case, m).is_file():
                    raise DataError(case_file(case, m), f"missing {m} image of case {case.name}")
            image_path, label_path = case_file(case, modality), case_file(case, data.label_suffix)
            image, labels = load_nifti(image_path), load_nifti(label_path, labels=True)
            samples += case_samples(
                case.name, image, labels, image_path=image_path, label_path=label_path, task=task, data=data
            )
        except DataError as err:
            bad.handle(err)
    return samples
