"""Synthetic abdominal CT slices with liver (1) and lesion (2) masks.

Each slice is one synthetic patient. Liver shape, place and contrast vary; lesions are
hypo- or hyper-dense blobs inside the liver; some slices miss the liver or the lesion.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, LIVER, LESION = 0, 1, 2


def make_ct_slices(
    n: int,
    *,
    image_size: int,
    lesion_fraction: float,
    intensity_shift: float,
    intensity_scale: float,
    noise_std: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` slices ``[n, 1, S, S]`` (float32) and label maps ``[n, S, S]`` (int64).

    Parameters
    ----------
    lesion_fraction : float
        Share of slices whose liver carries at least one lesion.
    intensity_shift, intensity_scale : float
        Scanner differences between sites, applied as ``scale * x + shift``.
    noise_std : float
        Pixel noise.
    seed : int
        Everything is drawn from this seed.
    """
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis, indexing="xy")
    xx, yy = xx[None], yy[None]

    # 1. Body outline and a spine, both soft tissue / bone.
    body_rx = rng.uniform(0.8, 0.95, (n, 1, 1)).astype(np.float32)
    body_ry = rng.uniform(0.6, 0.75, (n, 1, 1)).astype(np.float32)
    body = ((xx / body_rx) ** 2 + (yy / body_ry) ** 2 < 1.0).astype(np.float32)
    images = 0.3 * body
    spine = ((xx / 0.12) ** 2 + ((yy - 0.45) / 0.12) ** 2 < 1.0).astype(np.float32)
    images += 0.5 * spine

    # 2. Liver: a rotated, wobbly ellipse on the patient's right (image left).
    cx = rng.uniform(-0.5, -0.25, (n, 1, 1)).astype(np.float32)
    cy = rng.uniform(-0.2, 0.1, (n, 1, 1)).astype(np.float32)
    rx = rng.uniform(0.25, 0.4, (n, 1, 1)).astype(np.float32)
    ry = rng.uniform(0.2, 0.35, (n, 1, 1)).astype(np.float32)
    theta = rng.uniform(-0.5, 0.5, (n, 1, 1)).astype(np.float32)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    wobble = 1.0 + 0.12 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 6.3, (n, 1, 1)))
    has_liver = rng.random((n, 1, 1)) < 0.9  # some slices are above/below the liver
    liver = ((u / rx) ** 2 + (v / ry) ** 2 < wobble**2) & has_liver & (body > 0)
    contrast = rng.uniform(0.12, 0.25, (n, 1, 1)).astype(np.float32)
    images += contrast * liver

    # 3. Lesions inside the liver, darker or brighter than parenchyma.
    labels = np.where(liver, LIVER, BACKGROUND).astype(np.int64)
    with_lesion = rng.random(n) < lesion_fraction
    for k in range(2):
        active = with_lesion & ((k == 0) | (rng.random(n) < 0.4))
        lx = cx + rng.uniform(-0.5, 0.5, (n, 1, 1)).astype(np.float32) * rx
        ly = cy + rng.uniform(-0.5, 0.5, (n, 1, 1)).astype(np.float32) * ry
        lr = rng.uniform(0.15, 0.3, (n, 1, 1)).astype(np.float32)
        lesion = (((xx - lx) ** 2 + (yy - ly) ** 2) < lr**2) & liver & active[:, None, None]
        delta = rng.choice([-1.0, 1.0], (n, 1, 1)) * rng.uniform(0.3, 0.5, (n, 1, 1))
        images += (delta * lesion).astype(np.float32)
        labels[lesion] = LESION

    # 4. Noise, then the site's scanner response.
    images += rng.normal(0.0, noise_std, images.shape).astype(np.float32)
    images = intensity_scale * images + intensity_shift
    return images[:, None].astype(np.float32), labels
