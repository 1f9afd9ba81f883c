"""DICOM classification data in class folders: ``<root>/[{train,val,test}/]<CLASS>/``.

A class folder holds single DICOM files (one image each, or each frame of a multi-frame
file) and/or series folders (every slice becomes an image of the class). The patient is
the PatientID tag, so all images of one patient are one privacy unit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from common.data.class_folders import read_class_folders
from common.data.dicom_series import dicom_patient_id, read_dicom, read_dicom_series
from common.data.errors import BadFiles
from common.data.patients import Sample


def load_dicom_entry(path: Path) -> list[tuple[str, np.ndarray]]:
    """``(PatientID, image)`` for every frame of a DICOM file or slice of a series folder."""
    if path.is_dir():
        series = read_dicom_series(path)
        return [(series.patient, image) for image in series.volume]
    ds, pixels = read_dicom(path)
    patient = dicom_patient_id(ds, path)
    frames = pixels if pixels.ndim == 3 else pixels[None]
    return [(patient, frame) for frame in frames]


def read_dicom_folders(root: Path, *, task: DictConfig, data: DictConfig, bad: BadFiles) -> list[Sample]:
    """Every DICOM image under ``root``'s class folders, with its PatientID."""
    return read_class_folders(
        root,
        classes=list(data.classes),
        load=load_dicom_entry,
        bad=bad,
        image_size=task.image_size,
        window=data.get("window"),
    )
