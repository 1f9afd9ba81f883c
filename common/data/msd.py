"""Medical Segmentation Decathlon tasks: ``dataset.json``, ``imagesTr/*.nii.gz``, ``labelsTr/*.nii.gz``.

One case is one patient (its id is the file name: ``liver_0``). Labels are mapped to the
task's classes with ``data.label_map`` (Task03_Liver: 0 background, 1 liver, 2 tumour).
The unlabelled ``imagesTs`` are not used: the held-out test patients come from a split
by patient (``data.split: by_patient``).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from common.data.class_folders import find_split_root
from common.data.errors import BadFiles, DataError
from common.data.patients import Sample
from common.data.volume_slices import case_samples, load_nifti, nifti_case_id

DATASET_JSON = "dataset.json"


def read_msd_index(root: Path) -> tuple[Path, list[dict]]:
    """The task folder and its ``training`` entries (``image``/``label`` paths).

    Raises
    ------
    DataError
        Missing or malformed ``dataset.json``.
    """
    base = find_split_root(root, markers=(DATASET_JSON,))
    index = base / DATASET_JSON
    if not index.is_file():
        raise DataError(index, "missing dataset.json (Medical Segmentation Decathlon layout)")
    try:
        entries = list(json.loads(index.read_text())["training"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(index, f"malformed dataset.json: needs 'training': [{{'image', 'label'}}, ...] ({err!r})") from err
    for entry in entries:
        if not isinstance(entry, dict) or not {"image", "label"} <= entry.keys():
            raise DataError(index, f"malformed dataset.json: training entry {entry!r} needs 'image' and 'label'")
    if not entries:
        raise DataError(index, "dataset.json lists no training cases")
    return base, entries


def read_msd(root: Path, *, task: DictConfig, data: DictConfig, bad: BadFiles) -> list[Sample]:
    """Every labelled case's slices, one patient per case."""
    base, entries = read_msd_index(root)
    samples: list[Sample] = []
    for entry in entries:
        image_path, label_path = base / entry["image"], base / entry["label"]
        try:
            image = load_nifti(image_path)
            labels = load_nifti(label_path, labels=True)
            samples += case_samples(
                nifti_case_id(image_path), image, labels,
                image_path=image_path, label_path=label_path, task=task, data=data,
            )
        except DataError as err:
            bad.handle(err)
    return samples
