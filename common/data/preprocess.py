"""Per-image preprocessing shared by all readers: windowing, resizing, label mapping.

Everything here uses one image (or one label map) at a time and fixed settings from
config: statistics pooled over patients would leak across the privacy unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.data.errors import DataError


def apply_window(image: np.ndarray, window: Sequence[float] | None) -> np.ndarray:
    """Clip to ``window = [low, high]`` (e.g. CT Hounsfield units) and scale to [0, 1]; ``None`` keeps values."""
    image = np.asarray(image, dtype=np.float32)
    if window is None:
        return image
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise ValueError(f"data.window must be [low, high] with high > low, got {list(window)}")
    return (np.clip(image, low, high) - low) / (high - low)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased) resize of a 2D image to ``size x size``."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2D label map (no invented label values)."""
    if labels.shape == (size, size):
        return labels.astype(np.int64, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None, None]
    return F.interpolate(x, size=(size, size), mode="nearest-exact")[0, 0].numpy().astype(np.int64)


def map_labels(labels: np.ndarray, label_map: Mapping, path: str | Path) -> np.ndarray:
    """Map raw label values to task classes with ``data.label_map`` (e.g. BraTS 4 -> lesion).

    Raises
    ------
    DataError
        If the file holds a value the map does not name (never silently background).
    """
    table = {int(round(float(k))): int(v) for k, v in label_map.items()}
    raw = np.rint(labels).astype(np.int64)
    values = np.unique(raw)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        raise DataError(path, f"unknown label value(s) {unknown}; data.label_map allows {sorted(table)}")
    out = np.zeros_like(raw)
    for value in values:
        out[raw == value] = table[int(value)]
    return out


def standardize_per_image(images: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per image: per-sample, so it uses no other patient's data."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    return (images - mean) / std
