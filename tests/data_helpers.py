"""Small files in real layouts for the reader tests, and the reader configs they are read with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from common.data.synthetic_files import make_xray_patients

CLASSES = ["NORMAL", "PNEUMONIA"]


def classification_cfg(fmt: str = "kermany", image_size: int = 16, **data) -> tuple[DictConfig, DictConfig]:
    """(task, data) configs as a site view has them, for a classification reader."""
    task = OmegaConf.create({"name": "classification", "image_size": image_size})
    base = dict(format=fmt, root="", classes=CLASSES, label_map=None, patient_pattern=None, window=None,
                split="auto", test_fraction=0.25, on_bad_file="error", synthesize=False, seed=0)
    return task, OmegaConf.create(base | data)


def segmentation_cfg(fmt: str = "msd", image_size: int = 16, **data) -> tuple[DictConfig, DictConfig]:
    """(task, data) configs as a site view has them, for a segmentation reader."""
    task = OmegaConf.create({"name": "segmentation", "image_size": image_size})
    base = dict(format=fmt, root="", label_map={0: 0, 1: 1, 2: 2}, window=None, slice_axis=2, slices="all",
                foreground_bias=0.0, channel=0, modalities=["t1", "t1ce", "t2", "flair"], modality="flair",
                label_suffix="seg", split="auto", test_fraction=0.25, on_bad_file="error", synthesize=False, seed=0)
    return task, OmegaConf.create(base | data)


def xray_patients(num_train: int = 8, num_test: int = 4, seed: int = 0):
    """A few synthetic X-ray patients (16 px, both classes, 1-3 images each)."""
    return make_xray_patients(
        num_train=num_train, num_test=num_test, val_fraction=0.25, images_per_patient=(1, 3), image_size=16,
        positive_fraction=0.5, label_noise=0.0, intensity_shift=0.0, intensity_scale=1.0, noise_std=0.05,
        pixel_window=(-0.6, 1.3), seed=seed,
    )


def write_jpeg(path: Path, size: int = 20, value: int = 128, mode: str = "L") -> Path:
    """A small valid JPEG (grey, or RGB like some files of the public archive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    pixels = np.clip(rng.normal(value, 20, (size, size)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    (image.convert("RGB") if mode == "RGB" else image).save(path)
    return path
