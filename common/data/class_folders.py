"""Class-folder layouts: ``<root>/{train,val,test}/<CLASS>/<files>`` or ``<root>/<CLASS>/<files>``.

Shared by the JPEG/PNG (Kermany) and DICOM classification readers; each brings a loader
that turns one folder entry into ``(patient id, 2D image)`` pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.data.errors import BadFiles, DataError
from common.data.patients import Sample
from common.data.preprocess import apply_window, resize_image

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")
# Archive debris that is never data.
IGNORED = ("__MACOSX",)

Loader = Callable[[Path], list[tuple[str, np.ndarray]]]


def visible(folder: Path) -> list[Path]:
    """Entries of ``folder`` in name order, without hidden files and archive debris."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in IGNORED)


def find_split_root(root: Path, *, markers: Sequence[str] = SPLIT_FOLDERS) -> Path:
    """``root``, or the folder below it that holds the layout (the public archives nest it once or twice).

    Raises
    ------
    DataError
        If ``root`` is missing.
    """
    if not root.is_dir():
        raise DataError(root, "data.root does not exist or is not a folder")
    here = root
    for _ in range(3):
        if any((here / m).exists() for m in markers):
            return here
        subdirs = [p for p in visible(here) if p.is_dir()]
        if len(subdirs) != 1:
            break
        here = subdirs[0]
    return root


def read_class_folders(
    root: Path,
    *,
    classes: Sequence[str],
    load: Loader,
    bad: BadFiles,
    image_size: int,
    window: Sequence[float] | None,
) -> list[Sample]:
    """Every image under the class folders, labelled by its folder's index in ``classes``.

    Raises
    ------
    DataError
        Missing or unknown class folder, a class folder without a readable image, or (unless
        ``data.on_bad_file: skip``) a file that cannot be read.
    """
    base = find_split_root(root, markers=(*SPLIT_FOLDERS, *classes))
    splits = [s for s in SPLIT_FOLDERS if (base / s).is_dir()]
    groups = [(s, base / s) for s in splits] if splits else [(None, base)]
    if splits and "train" not in splits:
        raise DataError(base, f"has {splits} but no train folder")
    samples: list[Sample] = []
    for split, folder in groups:
        found = {p.name for p in visible(folder) if p.is_dir()}
        unknown = sorted(found - set(classes))
        if unknown:
            raise DataError(folder / unknown[0], f"unknown class folder; data.classes allows {list(classes)}")
        for label, name in enumerate(classes):
            class_dir = folder / name
            if not class_dir.is_dir():
                raise DataError(class_dir, f"missing class folder; data.classes expects {list(classes)}")
            before = len(samples)
            for entry in visible(class_dir):
                try:
                    pairs = load(entry)
                except DataError as err:
                    bad.handle(err)
                    continue
                for patient, image in pairs:
                    image = resize_image(apply_window(image, window), image_size)
                    samples.append(Sample(patient, image, label, str(entry), split))
            if len(samples) == before:
                raise DataError(class_dir, "empty class folder: no readable image in it")
    return samples
