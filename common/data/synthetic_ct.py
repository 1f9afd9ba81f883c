"""Synthetic abdominal CT with liver (1) and lesion (2) masks: single slices or small volumes.

Each slice (``make_ct_slices``) or each volume (``make_ct_volumes``) is one synthetic
patient. Liver shape, place and contrast vary; the liver is an ellipsoid-like organ and
lesions are hypo- or hyper-dense spheres inside it, so consecutive slices of a volume are
coherent; some slices miss the liver or the lesion.
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
    images, labels = make_ct_volumes(
        n, slices=1, image_size=image_size, lesion_fraction=lesion_fraction, intensity_shift=intensity_shift,
        intensity_scale=intensity_scale, noise_std=noise_std, seed=seed,
    )
    return images, labels[:, 0]


def make_ct_volumes(
    n: int,
    *,
    slices: int,
    image_size: int,
    lesion_fraction: float,
    intensity_shift: float,
    intensity_scale: float,
    noise_std: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` volumes ``[n, D, S, S]`` (float32, D = ``slices``) and labels ``[n, D, S, S]`` (int64).

    A single slice (``slices=1``) is a mid-liver slice of which 10% miss the liver (above or
    below it); in a volume the slices span the liver's upper to lower part.
    """
    if not 0.0 <= lesion_fraction <= 1.0:
        raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, image_size, dtype=np.float32)
    xx, yy = np.meshgrid(axis, axis, indexing="xy")
    xx, yy = xx[None, None], yy[None, None]
    zz = np.linspace(-0.8, 0.8, slices, dtype=np.float32)[None, :, None, None] if slices > 1 else np.zeros((1, 1, 1, 1), np.float32)

    def per_case(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1, 1, 1)).astype(np.float32)

    # 1. Body outline and a spine, both soft tissue / bone.
    body = ((xx / per_case(0.8, 0.95)) ** 2 + (yy / per_case(0.6, 0.75)) ** 2 < 1.0).astype(np.float32)
    spine = ((xx / 0.12) ** 2 + ((yy - 0.45) / 0.12) ** 2 < 1.0).astype(np.float32)
    images = 0.3 * body + 0.5 * spine

    # 2. Liver: a rotated, wobbly ellipse on the patient's right (image left), shrinking away
    #    from its centre slice zc (half-height hz).
    cx, cy = per_case(-0.5, -0.25), per_case(-0.2, 0.1)
    rx, ry = per_case(0.25, 0.4), per_case(0.2, 0.35)
    theta = per_case(-0.5, 0.5)
    zc, hz = per_case(-0.2, 0.2), per_case(0.8, 1.1)
    taper = np.sqrt(np.clip(1.0 - ((zz - zc) / hz) ** 2, 0.0, None))
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    wobble = 1.0 + 0.12 * np.sin(3 * np.arctan2(v, u) + per_case(0.0, 6.3))
    present = rng.random((n, 1, 1, 1)) < (0.9 if slices == 1 else 1.0)  # a lone slice may miss the liver
    liver = ((u / rx) ** 2 + (v / ry) ** 2 < (wobble * taper) ** 2) & present & (body > 0)
    images = images + per_case(0.12, 0.25) * liver

    # 3. Lesions: spheres inside the liver, darker or brighter than parenchyma.
    labels = np.where(liver, LIVER, BACKGROUND).astype(np.int64)
    with_lesion = rng.random(n) < lesion_fraction
    for k in range(2):
        active = (with_lesion & ((k == 0) | (rng.random(n) < 0.4)))[:, None, None, None]
        lx = cx + per_case(-0.5, 0.5) * rx
        ly = cy + per_case(-0.5, 0.5) * ry
        # A lone slice cuts through its lesion; in a volume the lesion sits somewhere in the liver.
        lz = zc + per_case(-0.3, 0.3) * hz if slices > 1 else zz
        lr, lrz = per_case(0.15, 0.3), per_case(0.3, 0.6)
        disc = lr * np.sqrt(np.clip(1.0 - ((zz - lz) / lrz) ** 2, 0.0, None))
        lesion = (((xx - lx) ** 2 + (yy - ly) ** 2) < disc**2) & liver & active
        delta = rng.choice([-1.0, 1.0], (n, 1, 1, 1)) * per_case(0.3, 0.5)
        images = images + (delta * lesion).astype(np.float32)
        labels[lesion] = LESION

    # 4. Noise, then the site's scanner response.
    images = images + rng.normal(0.0, noise_std, images.shape).astype(np.float32)
    images = intensity_scale * images + intensity_shift
    return images.astype(np.float32), labels
