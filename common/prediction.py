"""Predictions of a logged privmed model for image files, prepared exactly as in training.

Classification: one JPEG/PNG or single-image DICOM file -> the probability of the positive
class. Segmentation: a NIfTI volume (cut into slices along the task's ``slice_axis``, each
windowed, resized and standardised like a training slice) or one 2D file -> a label mask at
the input's own size and geometry (NIfTI with the input's affine, or PNG whose pixel values are
class indices).

Everything happens where the file is; nothing leaves the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.data.dicom_series import read_dicom
from common.data.errors import DataError
from common.data.kermany import SUFFIXES as PICTURE_SUFFIXES
from common.data.kermany import load_picture
from common.data.preprocess import apply_window, resize_image, standardize_per_image
from common.data.readers import read_image_file
from common.data.volume_slices import NIFTI_SUFFIXES, load_nifti, nifti_case_id
from common.models.logged import TrainedModel

# The mask file written for a segmentation input, by input kind.
MASK_SUFFIX = {"nifti": ".nii.gz", "image": ".png"}


@dataclass(frozen=True)
class Prediction:
    """One file's prediction: a probability (classification) or a written mask (segmentation)."""

    path: Path
    probability: float | None = None
    mask_path: Path | None = None
    # Voxels (pixels) per predicted class, background included (segmentation only).
    class_counts: dict[str, int] | None = None


def is_nifti(path: Path) -> bool:
    """Whether ``path`` names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def choose_window(trained: TrainedModel, window: Sequence[float] | None | str = "model") -> list[float] | None:
    """The intensity window for new files: ``"model"`` takes the training sites' one.

    Raises
    ------
    ValueError
        If the training sites used different windows and none was given.
    """
    if window != "model":
        return None if window is None else [float(v) for v in window]
    if len(trained.windows) > 1:
        raise ValueError(
            f"the model's sites prepared images with different intensity windows {trained.windows}; "
            "pass --window LOW HIGH for your scanner (or --window none)"
        )
    return trained.windows[0] if trained.windows else None


def predict_file(
    trained: TrainedModel, path: Path, *, window: list[float] | None, mask_path: Path | None = None
) -> Prediction:
    """Predict ``path`` with ``trained``; segmentation writes its mask to ``mask_path``.

    Raises
    ------
    DataError
        If the file is missing, unreadable, or of a kind the model's task does not take.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such image file")
    if trained.task == "classification":
        if is_nifti(path):
            raise DataError(path, "a NIfTI volume, but this model classifies 2D images (JPEG/PNG or DICOM)")
        image = read_image_file(path, image_size=trained.image_size, window=window)
        with torch.no_grad():
            logit = trained.module(image).reshape(-1)[0]
        return Prediction(path, probability=float(torch.sigmoid(logit)))
    if trained.task != "segmentation":
        raise ValueError(f"model task must be classification or segmentation, got {trained.task!r}")
    kind = "nifti" if is_nifti(path) else "image"
    out = Path(mask_path) if mask_path is not None else default_mask_path(path)
    if kind == "nifti":
        labels = _segment_volume(trained, path, window=window, out=out)
    else:
        labels = _segment_image(trained, path, window=window, out=out)
    counts = {name: int((labels == index).sum()) for index, name in enumerate(trained.class_names)}
    return Prediction(path, mask_path=out, class_counts=counts)


def default_mask_path(path: Path) -> Path:
    """``<case>_mask.nii.gz`` (NIfTI) or ``<stem>_mask.png`` in the current directory."""
    if is_nifti(path):
        return Path(f"{nifti_case_id(path)}_mask{MASK_SUFFIX['nifti']}")
    return Path(f"{path.stem}_mask{MASK_SUFFIX['image']}")


def _labels(trained: TrainedModel, images: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Arg-max classes of ``images`` ``[N, 1, S, S]``, resized (nearest) to ``shape`` -> ``[N, H, W]``."""
    with torch.no_grad():
        classes = trained.module(images).argmax(dim=1, keepdim=True).float()
    return F.interpolate(classes, size=shape, mode="nearest-exact")[:, 0].numpy().astype(np.uint8)


def _segment_volume(trained: TrainedModel, path: Path, *, window: list[float] | None, out: Path) -> np.ndarray:
    data = trained.metadata.get("config", {}).get("task", {}).get("data", {})
    axis, channel = int(data.get("slice_axis", 2)), int(data.get("channel", 0))
    volume = load_nifti(path)
    if volume.ndim == 4:  # several channels: the one the model was trained on
        volume = volume[..., channel]
    if volume.ndim != 3:
        raise DataError(path, f"expected a 3D volume, got shape {volume.shape}")
    slices = np.moveaxis(volume, axis, 0)
    size = trained.image_size
    images = np.stack([resize_image(apply_window(s, window), size) for s in slices])
    batch = standardize_per_image(torch.from_numpy(images)[:, None]).float()
    labels = np.moveaxis(_labels(trained, batch, slices.shape[1:]), 0, axis)
    source = nib.load(path)
    mask = nib.Nifti1Image(labels, source.affine)
    mask.set_qform(*source.get_qform(coded=True))
    mask.set_sform(*source.get_sform(coded=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(mask, out)
    return labels


def _segment_image(trained: TrainedModel, path: Path, *, window: list[float] | None, out: Path) -> np.ndarray:
    image = read_image_file(path, image_size=trained.image_size, window=window)
    labels = _labels(trained, image, _picture_shape(path))[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels).save(out)  # uint8: an 8-bit grey PNG
    return labels


def _picture_shape(path: Path) -> tuple[int, int]:
    """The ``(H, W)`` of a 2D file read by :func:`read_image_file` (which has validated it)."""
    if path.suffix.lower() in PICTURE_SUFFIXES:
        return tuple(load_picture(path).shape[:2])
    return tuple(read_dicom(path)[1].shape[-2:])
