"""JPEG/PNG chest X-rays in the Kermany layout: ``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``.

Patient ids come from the public archive's file names:
``person1_bacteria_1.jpeg`` / ``person1_virus_6.jpeg`` -> ``person1``;
``IM-0115-0001.jpeg`` -> ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``.
A site with other names sets ``data.patient_pattern``, a regex whose first group is the id.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError

from common.data.class_folders import read_class_folders
from common.data.errors import BadFiles, DataError
from common.data.patients import Sample

SUFFIXES = (".jpeg", ".jpg", ".png")
KERMANY_PATTERNS = (re.compile(r"^(person\d+)_(?:bacteria|virus)_\d+$"), re.compile(r"^(.*IM-\d+)-\d+$"))


def patient_id(path: Path, pattern: str | None = None) -> str:
    """The patient id in a file name (Kermany rules, or ``pattern``'s first group).

    Raises
    ------
    DataError
        If the name carries no patient id.
    """
    patterns = (re.compile(pattern),) if pattern else KERMANY_PATTERNS
    for regex in patterns:
        match = regex.match(path.stem)
        if match:
            return match.group(1)
    expected = pattern or "personN_bacteria_M, personN_virus_M, [PREFIX-]IM-XXXX-YYYY"
    raise DataError(path, f"file name carries no patient id (expected {expected}; set data.patient_pattern)")


def load_picture(path: Path) -> np.ndarray:
    """A JPEG/PNG as a 2D float32 array (colour files are converted to grey).

    Raises
    ------
    DataError
        If the file is not an image, is truncated or corrupt.
    """
    if path.is_dir() or path.suffix.lower() not in SUFFIXES:
        raise DataError(path, f"not an image file (expected one of {SUFFIXES})")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "I", "I;16", "F"):
                img = img.convert("L")
            return np.asarray(img, dtype=np.float32)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DataError(path, f"unreadable image ({err})") from err


def read_kermany(root: Path, *, task: DictConfig, data: DictConfig, bad: BadFiles) -> list[Sample]:
    """Every image under ``root``, labelled by class folder, with its patient id."""
    pattern = data.get("patient_pattern")

    def load(path: Path) -> list[tuple[str, np.ndarray]]:
        image = load_picture(path)
        return [(patient_id(path, pattern), image)]

    return read_class_folders(
        root, classes=list(data.classes), load=load, bad=bad, image_size=task.image_size, window=data.get("window")
    )
