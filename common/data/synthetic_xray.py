"""Synthetic chest X-rays: pneumonia shows as a diffuse opacity inside a lung field.

The signal is real but not trivially separable: opacity strength, size and place vary,
some positives are faint, negatives carry small bright vessels/nodules of the same
brightness, and a fraction of labels is flipped (as in real radiology reads).
"""

from __future__ import annotations

import numpy as np


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(axis, axis, indexing="xy")


def _smooth_noise(rng: np.random.Generator, n: int, size: int, scale: int) -> np.ndarray:
    """Low-frequency texture: coarse noise upsampled by nearest repeat then box-blurred."""
    coarse = rng.standard_normal((n, size // scale + 1, size // scale + 1)).astype(np.float32)
    fine = coarse.repeat(scale, axis=1).repeat(scale, axis=2)[:, :size, :size]
    kernel = np.ones(scale, dtype=np.float32) / scale
    fine = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 2, fine)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="same"), 1, fine)


def make_xray_images(
    n: int,
    *,
    image_size: int,
    positive_fraction: float,
    intensity_shift: float,
    intensity_scale: float,
    noise_std: float,
    label_noise: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` images ``[n, 1, S, S]`` (float32) and binary labels ``[n]`` (int64).

    Parameters
    ----------
    positive_fraction : float
        Share of pneumonia cases (a site's class mix).
    intensity_shift, intensity_scale : float
        Scanner differences between sites, applied as ``scale * x + shift``.
    noise_std : float
        Pixel noise.
    label_noise : float
        Fraction of labels flipped after drawing the image.
    seed : int
        Everything is drawn from this seed.
    """
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = np.random.default_rng(seed)
    xx, yy = _grid(image_size)
    labels = (rng.random(n) < positive_fraction).astype(np.int64)

    # 1. Body and two lung fields, jittered per patient.
    jitter = rng.normal(0.0, 0.04, size=(n, 4)).astype(np.float32)
    body = ((xx / 0.9) ** 2 + (yy / 1.0) ** 2 < 1.0).astype(np.float32)
    images = 0.55 * body[None].repeat(n, axis=0)
    lung_masks = np.zeros((n, image_size, image_size), dtype=np.float32)
    for side in (-1.0, 1.0):
        cx = side * (0.38 + jitter[:, 0:1, None])
        cy = -0.05 + jitter[:, 1:2, None]
        rx, ry = 0.26 + jitter[:, 2:3, None] * 0.5, 0.55 + jitter[:, 3:4, None] * 0.5
        lung_masks += (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0).astype(np.float32)
    images -= 0.35 * lung_masks
    # 2. Ribs and parenchymal texture.
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    images += 0.06 * np.sin(14.0 * yy[None] + phase) * lung_masks
    images += 0.05 * _smooth_noise(rng, n, image_size, 4) * lung_masks

    # 3. Distractors in everyone: small bright vessels/nodules.
    for _ in range(3):
        cx, cy = rng.uniform(-0.6, 0.6, (2, n, 1, 1)).astype(np.float32)
        amp = rng.uniform(0.05, 0.25, (n, 1, 1)).astype(np.float32)
        images += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.04**2)) * lung_masks

    # 4. Pneumonia: a broad opacity inside one lung, of varying strength.
    pos = labels == 1
    side = rng.choice([-1.0, 1.0], size=(n, 1, 1)).astype(np.float32)
    cx = side * 0.38 + rng.normal(0, 0.08, (n, 1, 1)).astype(np.float32)
    cy = rng.uniform(-0.4, 0.35, (n, 1, 1)).astype(np.float32)
    sigma = rng.uniform(0.14, 0.28, (n, 1, 1)).astype(np.float32)
    amp = rng.uniform(0.1, 0.5, (n, 1, 1)).astype(np.float32) * pos[:, None, None]
    images += amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)) * lung_masks

    # 5. Noise, then the site's scanner response.
    images += rng.normal(0.0, noise_std, images.shape).astype(np.float32)
    images = intensity_scale * images + intensity_shift
    flip = rng.random(n) < label_noise
    labels = np.where(flip, 1 - labels, labels)
    return images[:, None].astype(np.float32), labels
