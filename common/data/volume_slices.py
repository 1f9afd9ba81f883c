"""3D image + label volumes (NIfTI) into 2D slice samples of one patient each."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from omegaconf import DictConfig

from common.data.errors import DataError
from common.data.patients import Sample
from common.data.preprocess import apply_window, map_labels, resize_image, resize_labels

log = logging.getLogger(__name__)

SLICES = ("all", "foreground")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def nifti_case_id(path: Path) -> str:
    """``liver_0.nii.gz`` -> ``liver_0``."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def load_nifti(path: Path, *, labels: bool = False) -> np.ndarray:
    """A NIfTI volume as float32 (scaled by the header's slope/intercept) or, for labels, raw values.

    Raises
    ------
    DataError
        If the file is missing, not NIfTI, or truncated.
    """
    if not path.is_file():
        raise DataError(path, "missing label file" if labels else "missing image file")
    try:
        img = nib.load(path)
        if labels:
            return np.asarray(img.dataobj)
        return img.get_fdata(dtype=np.float32)
    except (ImageFileError, OSError, EOFError, ValueError, nib.spatialimages.HeaderDataError) as err:
        raise DataError(path, f"unreadable NIfTI file ({err})") from err


def case_samples(
    patient: str,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    image_path: Path,
    label_path: Path,
    task: DictConfig,
    data: DictConfig,
) -> list[Sample]:
    """2D slices along ``data.slice_axis``: windowed, resized, labels mapped to task classes.

    Raises
    ------
    DataError
        Image and label shapes differ, or a label value outside ``data.label_map``.
    """
    if image.ndim == 4:  # several channels (e.g. MSD brain: FLAIR, T1w, T1gd, T2w)
        image = image[..., int(data.get("channel", 0))]
    if image.ndim != 3:
        raise DataError(image_path, f"expected a 3D volume, got shape {image.shape}")
    if image.shape != labels.shape:
        raise DataError(label_path, f"label shape {labels.shape} differs from image shape {image.shape} ({image_path.name})")
    mapped = map_labels(labels, data.label_map, label_path)
    axis = int(data.get("slice_axis", 2))
    mode = data.get("slices", "all")
    if mode not in SLICES:
        raise ValueError(f"data.slices must be one of {SLICES}, got {mode!r}")
    image, mapped = np.moveaxis(image, axis, 0), np.moveaxis(mapped, axis, 0)
    samples = []
    for z in range(image.shape[0]):
        if mode == "foreground" and not mapped[z].any():
            continue
        x = resize_image(apply_window(image[z], data.get("window")), task.image_size)
        samples.append(Sample(patient, x, resize_labels(mapped[z], task.image_size), f"{image_path}[slice {z}]"))
    if not samples:
        log.info("%s: no slice with foreground; case left out (data.slices=foreground)", label_path)
    return samples
