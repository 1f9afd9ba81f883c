"""Canary patients for the one-run membership audit, written as real files at the audited site.

Each canary is an out-of-distribution image with a random label: a model that learns it learns
it by heart, which is what the audit must be able to see. Each is its own high-contrast pattern
(a random 4 x 4 field, smoothly upsampled and thresholded to two grey levels), so canaries
differ from one another as well as from X-rays: Gaussian-noise canaries (the first design) all
looked alike to the model, which learnt "noise" as a group, and their gradients could not tell
an included canary from an excluded one. Each canary is included in the site's training folder independently
with probability 1/2; every canary is kept aside (under ``pool``) to be scored afterwards
with the same reader the site uses.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.data.readers import read_image_file

# Canary file names follow the Kermany archive's rules, so the site's reader takes each one
# as its own patient: CANARY-IM-0007-0001.jpeg -> patient CANARY-IM-0007.
_NAME = "CANARY-IM-{:04d}-0001.jpeg"


@dataclass(frozen=True)
class Canaries:
    """The canaries as the site's reader prepares them, their labels and who was included."""

    images: torch.Tensor  # [m, 1, S, S]
    labels: torch.Tensor  # [m]
    included: np.ndarray  # [m] bool


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """A two-level pattern ``[size, size]`` in [0, 1]: a random coarse field, bicubic-upsampled, thresholded."""
    coarse = torch.as_tensor(rng.random((1, 1, 4, 4)), dtype=torch.float32)
    field = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
    return np.where(field.numpy() > 0.5, 0.95, 0.05)


def plant_canaries(
    site_root: Path,
    pool: Path,
    *,
    count: int,
    classes: list[str],
    file_size: int,
    image_size: int,
    window: list[float] | None,
    jpeg_quality: int,
    seed: int,
) -> Canaries:
    """Write ``count`` canaries to ``pool`` and each, with probability 1/2, into ``site_root/train``.

    Raises
    ------
    ValueError
        If ``count`` < 2 or ``site_root`` has no ``train`` folder (the site's data is not written yet).
    """
    if count < 2:
        raise ValueError(f"audit.canaries must be >= 2, got {count}")
    if not (site_root / "train").is_dir():
        raise ValueError(f"{site_root} has no train/ folder to plant canaries in")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    included = rng.random(count) < 0.5
    pool.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(count):
        pixels = _pattern(rng, file_size)
        path = pool / _NAME.format(i + 1)
        Image.fromarray(np.rint(pixels * 255).astype(np.uint8), mode="L").save(path, quality=jpeg_quality)
        if included[i]:
            folder = site_root / "train" / classes[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
        images.append(read_image_file(path, image_size=image_size, window=window)[0])
    return Canaries(images=torch.stack(images), labels=torch.as_tensor(labels, dtype=torch.float32), included=included)
