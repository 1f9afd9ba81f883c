"""One site's train/test data, built from its ``data`` config and the task config."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch.utils.data import TensorDataset

from common.data.synthetic_ct import make_ct_slices
from common.data.synthetic_xray import make_xray_images

FORMATS = ("synthetic",)


@dataclass(frozen=True)
class SiteData:
    """A site's local datasets; each item is one privacy unit (one synthetic patient)."""

    train: TensorDataset
    test: TensorDataset


def standardize_per_image(images: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per image: per-sample, so it uses no other patient's data."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    std = images.std(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    return (images - mean) / std


def build_site_data(task_cfg: DictConfig, data_cfg: DictConfig) -> SiteData:
    """Build a site's datasets.

    Parameters
    ----------
    task_cfg : DictConfig
        ``cfg.task``: ``name``, ``image_size`` and the generator's ``synthetic`` settings.
    data_cfg : DictConfig
        The site's ``data`` block: ``format``, sizes, seed and the site's shifts.
    """
    if data_cfg.format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {data_cfg.format!r}")
    if data_cfg.num_train < 1 or data_cfg.num_test < 1:
        raise ValueError(f"num_train and num_test must be >= 1, got {data_cfg.num_train}, {data_cfg.num_test}")
    n = data_cfg.num_train + data_cfg.num_test
    common = dict(
        image_size=task_cfg.image_size,
        intensity_shift=data_cfg.intensity_shift,
        intensity_scale=data_cfg.intensity_scale,
        noise_std=task_cfg.synthetic.noise_std,
        seed=data_cfg.seed,
    )
    if task_cfg.name == "classification":
        images, labels = make_xray_images(
            n, positive_fraction=data_cfg.positive_fraction, label_noise=task_cfg.synthetic.label_noise, **common
        )
        targets = torch.from_numpy(labels).float()
    elif task_cfg.name == "segmentation":
        images, labels = make_ct_slices(n, lesion_fraction=data_cfg.lesion_fraction, **common)
        targets = torch.from_numpy(labels)
    else:
        raise ValueError(f"task.name must be 'classification' or 'segmentation', got {task_cfg.name!r}")
    x = standardize_per_image(torch.from_numpy(images))
    k = data_cfg.num_train
    return SiteData(train=TensorDataset(x[:k], targets[:k]), test=TensorDataset(x[k:], targets[k:]))
