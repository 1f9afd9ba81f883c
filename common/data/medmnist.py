"""MedMNIST ``.npz`` files: ``{train,val,test}_images`` (``[N, H, W]`` or ``[N, H, W, 3]``) and ``_labels``.

MedMNIST ships no patient ids, so each image is its own privacy unit (``<split>-<index>``).
That is only right if no patient has two images in the file: for data sets where patients
repeat (e.g. ChestMNIST), the ε reported is per image, not per patient.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from common.data.errors import BadFiles, DataError
from common.data.patients import Sample
from common.data.preprocess import apply_window, map_labels, resize_image

SPLITS = ("train", "val", "test")


def find_npz(root: Path) -> Path:
    """``root`` itself when it is a file, else the one ``.npz`` inside the folder."""
    if root.is_file():
        return root
    found = sorted(root.glob("*.npz")) if root.is_dir() else []
    if len(found) != 1:
        raise DataError(root, f"expected one MedMNIST .npz file (data.root), found {len(found)}")
    return found[0]


def read_medmnist(root: Path, *, task: DictConfig, data: DictConfig, bad: BadFiles) -> list[Sample]:
    """Every image of the ``.npz``, split as the file says (``val`` is pooled into training)."""
    path = find_npz(root)
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(path, f"unreadable .npz file ({err})") from err
    label_map = data.get("label_map") or {i: i for i in range(len(data.classes))}
    samples: list[Sample] = []
    for split in SPLITS:
        if f"{split}_images" not in arrays and split == "val":
            continue
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in arrays:
                raise DataError(path, f"missing key {key!r}; MedMNIST files hold {[f'{s}_images' for s in SPLITS]} and labels")
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_labels"]), -1)
        if len(images) != len(labels) or labels.shape[1] != 1:
            raise DataError(
                path, f"{split}: {len(images)} images but labels of shape {arrays[f'{split}_labels'].shape} (need [N] or [N, 1])"
            )
        if images.ndim == 4:
            images = images.mean(axis=-1)
        if images.ndim != 3:
            raise DataError(path, f"{split}_images must be [N, H, W] or [N, H, W, C], got {arrays[f'{split}_images'].shape}")
        mapped = map_labels(labels[:, 0], label_map, f"{path} ({split}_labels)")
        window = data.get("window")
        for i, (image, label) in enumerate(zip(images, mapped)):
            image = resize_image(apply_window(image, window), task.image_size)
            samples.append(Sample(f"{split}-{i:06d}", image, int(label), f"{path}[{split}_images][{i}]", split))
    return samples
