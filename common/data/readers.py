"""Registry of file readers: ``data.format`` name -> reader of a site's ``data.root``.

Every reader has the signature ``read(root, *, task, data, bad) -> list[Sample]`` and
returns preprocessed images/slices, each with its patient id and, where the layout has
them, its folder split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from common.data.brats import read_brats
from common.data.dicom_folders import read_dicom_folders
from common.data.dicom_series import read_dicom
from common.data.errors import BadFiles, DataError
from common.data.kermany import SUFFIXES as PICTURE_SUFFIXES
from common.data.kermany import load_picture, read_kermany
from common.data.medmnist import read_medmnist
from common.data.msd import read_msd
from common.data.patients import Sample
from common.data.preprocess import apply_window, resize_image, standardize_per_image

Reader = Callable[..., list[Sample]]

READERS: dict[str, Reader] = {
    "kermany": read_kermany,
    "dicom_folders": read_dicom_folders,
    "medmnist": read_medmnist,
    "msd": read_msd,
    "brats": read_brats,
}
# Which task each reader's labels serve.
TASK_OF = {"kermany": "classification", "dicom_folders": "classification", "medmnist": "classification",
           "msd": "segmentation", "brats": "segmentation"}
# The in-memory generator needs no reader (common/data/site_data.py).
FORMATS = ("synthetic", *READERS)


def read_files(root: Path, *, task: DictConfig, data: DictConfig, bad: BadFiles) -> list[Sample]:
    """Read ``root`` with the reader named by ``data.format``.

    Raises
    ------
    ValueError
        If the format is unknown, or serves another task than ``task.name``.
    """
    fmt = data.format
    if fmt not in READERS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    if TASK_OF[fmt] != task.name:
        raise ValueError(f"data.format={fmt!r} holds {TASK_OF[fmt]} labels, but task.name={task.name!r}")
    return READERS[fmt](root, task=task, data=data, bad=bad)


def read_image_file(path: Path, *, image_size: int, window: Sequence[float] | None) -> torch.Tensor:
    """One classification image (JPEG/PNG, or a single-image DICOM file) prepared as in training.

    The same loaders and steps as the class-folder readers and the site data: grey values,
    ``window``, resize to ``image_size``, per-image standardisation. Returns ``[1, 1, S, S]``.

    Raises
    ------
    DataError
        If the file is missing, unreadable, or holds more than one image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such image file")
    if path.suffix.lower() in PICTURE_SUFFIXES:
        images = [load_picture(path)]
    else:
        _, pixels = read_dicom(path)
        images = list(pixels) if pixels.ndim == 3 else [pixels]
    if len(images) != 1:
        raise DataError(path, f"holds {len(images)} images (frames); give one image per file")
    image = resize_image(apply_window(images[0], window), image_size)
    return standardize_per_image(torch.from_numpy(image)[None, None]).float()
