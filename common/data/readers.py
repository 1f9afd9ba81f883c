"""Registry of file readers: ``data.format`` name -> reader of a site's ``data.root``.

Every reader has the signature ``read(root, *, task, data, bad) -> list[Sample]`` and
returns preprocessed images/slices, each with its patient id and, where the layout has
them, its folder split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from common.data.brats import read_brats
from common.data.dicom_folders import read_dicom_folders
from common.data.errors import BadFiles
from common.data.kermany import read_kermany
from common.data.medmnist import read_medmnist
from common.data.msd import read_msd
from common.data.patients import Sample

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
