"""One site's train/test data, built from its ``data`` config and the task config.

``format: synthetic`` generates images in memory (one image per patient); every other
format reads files with a real reader (``common/data/readers.py``), after writing
synthetic files in that layout first where ``synthesize: true`` and ``root`` is missing.
Training items are patients (``PatientDataset``); the test set is every test image.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import TensorDataset

from common.data.data_cache import cache_digest, load_cached, save_cached
from common.data.errors import BadFiles
from common.data.patients import Patient, PatientDataset, Sample, flat_dataset
from common.data.preprocess import standardize_per_image
from common.data.readers import FORMATS, read_files
from common.data.splits import split_samples
from common.data.synthesize import ensure_synthetic
from common.data.synthetic_ct import make_ct_slices
from common.data.synthetic_xray import make_xray_images

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "SiteData", "build_site_data", "standardize_per_image"]


@dataclass(frozen=True)
class SiteData:
    """A site's local datasets: ``train`` items are patients (the privacy unit), ``test`` items images.

    ``summary`` says what was read; ``skipped`` lists bad files skipped under ``on_bad_file: skip``.
    """

    train: PatientDataset
    test: TensorDataset
    summary: str = ""
    skipped: tuple[str, ...] = ()

    @property
    def num_train_patients(self) -> int:
        """N of DP-SGD: Poisson sampling draws each training patient with q = batch_size / N."""
        return len(self.train)


def build_site_data(task_cfg: DictConfig, data_cfg: DictConfig, *, cache_dir: Path | None = None) -> SiteData:
    """Build a site's datasets, from ``cache_dir`` when it holds them for these files and settings.

    Parameters
    ----------
    task_cfg : DictConfig
        ``cfg.task``: ``name``, ``image_size`` and the generator's ``synthetic`` settings.
    data_cfg : DictConfig
        The site's ``data`` view: ``format``, ``root`` and reader settings, or the in-memory
        generator's sizes, seed and shifts.
    cache_dir : Path or None
        The site's data cache (``common/data/data_cache.py``) for file formats; None: always read.

    Raises
    ------
    ValueError
        Unknown format or settings.
    DataError
        A file that cannot be used (named in the message), unless the site skips bad files.
    """
    if data_cfg.format not in FORMATS:
        raise ValueError(f"data.format must be one of {FORMATS}, got {data_cfg.format!r}")
    if task_cfg.name not in ("classification", "segmentation"):
        raise ValueError(f"task.name must be 'classification' or 'segmentation', got {task_cfg.name!r}")
    if data_cfg.format == "synthetic":
        return _in_memory(task_cfg, data_cfg)
    if task_cfg.name == "classification" and len(data_cfg.classes) != 2:
        raise ValueError(f"data.classes must name 2 classes (negative, positive), got {list(data_cfg.classes)}")
    root = Path(os.path.normpath(data_cfg.root))
    if data_cfg.get("synthesize"):
        ensure_synthetic(root, task=task_cfg, data=data_cfg)
    cache_file = None
    if cache_dir is not None and root.is_dir():  # a missing root must fail in the reader, never hit a cache
        settings = {"task": OmegaConf.to_container(task_cfg, resolve=True),
                    "data": OmegaConf.to_container(data_cfg, resolve=True)}
        cache_file = Path(cache_dir) / f"{cache_digest(root, settings)}.npz"
        if (hit := load_cached(cache_file)) is not None:
            train_set, test_set, summary, skipped = hit
            return SiteData(train_set, test_set, f"{summary} (from the site's data cache)", skipped)
    bad = BadFiles(data_cfg.get("on_bad_file", "error"))
    samples = read_files(root, task=task_cfg, data=data_cfg, bad=bad)
    train, test = split_samples(samples, mode=data_cfg.split, test_fraction=data_cfg.test_fraction, seed=data_cfg.seed)
    bias = float(data_cfg.get("foreground_bias") or 0.0)
    data = SiteData(
        train=PatientDataset(group_patients(train, task=task_cfg.name, foreground_bias=bias)),
        test=flat_dataset(group_patients(test, task=task_cfg.name)),
        summary=_summary(data_cfg, root, train, test, bad),
        skipped=tuple(bad.skipped),
    )
    if cache_file is not None:
        save_cached(cache_file, data.train, data.test, data.summary, data.skipped)
    log.info("%s", data.summary)
    if bad.count:
        log.warning("%s: skipped %d bad file(s) (data.on_bad_file=skip)", root, bad.count)
    return data


def group_patients(samples: Sequence[Sample], *, task: str, foreground_bias: float = 0.0) -> list[Patient]:
    """Stack each patient's images (standardised per image), patients sorted by id.

    ``foreground_bias`` > 0 makes a segmentation patient's slices with foreground
    ``1 + foreground_bias`` times as likely to be drawn as its empty slices.
    """
    if foreground_bias < 0:
        raise ValueError(f"data.foreground_bias must be >= 0, got {foreground_bias}")
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient].append(s)
    patients = []
    for pid in sorted(by_patient):
        group = by_patient[pid]
        images = standardize_per_image(torch.from_numpy(np.stack([s.image for s in group]))[:, None])
        if task == "classification":
            targets = torch.tensor([float(s.target) for s in group])
            weights = None
        else:
            targets = torch.from_numpy(np.stack([s.target for s in group])).long()
            weights = 1.0 + foreground_bias * (targets > 0).flatten(1).any(1).float() if foreground_bias else None
        patients.append(Patient(pid, images.float(), targets, weights))
    return patients


def _summary(data_cfg: DictConfig, root: Path, train: Sequence[Sample], test: Sequence[Sample], bad: BadFiles) -> str:
    def part(samples: Sequence[Sample]) -> str:
        text = f"{len({s.patient for s in samples})} patients, {len(samples)} images"
        if data_cfg.get("classes") and samples and np.ndim(samples[0].target) == 0:
            counts = Counter(int(s.target) for s in samples)
            text += " (" + ", ".join(f"{name} {counts[i]}" for i, name in enumerate(data_cfg.classes)) + ")"
        return text

    return (f"{data_cfg.format} data at {root}: train {part(train)}; test {part(test)}; "
            f"skipped {bad.count} bad file(s)")


def _in_memory(task_cfg: DictConfig, data_cfg: DictConfig) -> SiteData:
    """The in-memory generator: each image (or slice) is its own synthetic patient."""
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
    else:
        images, labels = make_ct_slices(n, lesion_fraction=data_cfg.lesion_fraction, **common)
        targets = torch.from_numpy(labels)
    x = standardize_per_image(torch.from_numpy(images))
    k = data_cfg.num_train
    train = PatientDataset([Patient(f"synthetic-{i:06d}", x[i : i + 1], targets[i : i + 1]) for i in range(k)])
    summary = f"synthetic data in memory: train {k} patients, test {n - k} patients (one image each)"
    return SiteData(train=train, test=TensorDataset(x[k:], targets[k:]), summary=summary)
