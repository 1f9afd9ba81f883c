"""A site's preprocessed datasets on its own disk: files are read and decoded once, not per message.

A deployed SuperNode starts a fresh ClientApp process for every message (flwr 1.41), so an
in-memory cache lives for one message only. This cache is one ``.npz`` file under the site's
state dir (``<state_dir>/data_cache/<digest>.npz``), next to its privacy ledger; it never
leaves the site and nothing in it goes into a reply.

The digest covers everything the datasets are computed from: the cache format, the reader
settings (the task config and the site's ``data`` config: format, classes, window, image size,
split, seed, ...) and every file under ``data.root`` (relative path, size, modification time).
Any change gives another digest, so the files are read again; older entries are then removed.
A file is written to a temporary name and renamed, so a reader never sees half of one; an
unreadable entry counts as a miss. Bump ``CACHE_VERSION`` when a reader's output changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.atomic_file import atomic_write
from common.data.patients import Patient, PatientDataset

CACHE_VERSION = 1
CACHE_DIR = "data_cache"


def cache_digest(root: Path, settings: dict) -> str:
    """SHA-256 over the cache version, the reader ``settings`` and every file's path, size and mtime under ``root``."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "settings": settings}, sort_keys=True).encode())
    for folder, dirs, files in os.walk(root):
        dirs.sort()  # a fixed walk order: the digest must not depend on the file system's listing order
        for name in sorted(files):
            path = Path(folder) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_cached(path: Path) -> tuple[PatientDataset, TensorDataset, str, tuple[str, ...]] | None:
    """(train, test, summary, skipped) from a cache file, or None if it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            counts = f["train_counts"].tolist()
            images = torch.from_numpy(f["train_images"]).split(counts)
            targets = torch.from_numpy(f["train_targets"]).split(counts)
            weights = torch.from_numpy(f["train_weights"]).split(counts) if "train_weights" in f else None
            patients = [
                Patient(str(pid), images[i], targets[i], None if weights is None else weights[i])
                for i, pid in enumerate(f["train_ids"].tolist())
            ]
            test = TensorDataset(torch.from_numpy(f["test_images"]), torch.from_numpy(f["test_targets"]))
            return PatientDataset(patients), test, str(f["summary"]), tuple(f["skipped"].tolist())
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def save_cached(path: Path, train: PatientDataset, test: TensorDataset, summary: str, skipped: tuple[str, ...]) -> None:
    """Write the datasets to ``path`` atomically and remove the directory's other entries (stale digests)."""
    patients = train.patients
    arrays = {
        "train_ids": np.array([p.id for p in patients]),
        "train_counts": np.array([len(p.images) for p in patients], dtype=np.int64),
        "train_images": torch.cat([p.images for p in patients]).numpy(),
        "train_targets": torch.cat([p.targets for p in patients]).numpy(),
        "test_images": test.tensors[0].numpy(),
        "test_targets": test.tensors[1].numpy(),
        "summary": np.array(summary),
        "skipped": np.array(list(skipped), dtype=str),
    }
    if any(p.draw_weights is not None for p in patients):
        arrays["train_weights"] = torch.cat(
            [p.draw_weights if p.draw_weights is not None else torch.ones(len(p.images)) for p in patients]
        ).numpy()
    with atomic_write(path, "wb") as out:  # its temporary name does not end in .npz: never taken for an entry
        np.savez(out, **arrays)
    for other in path.parent.glob("*.npz"):
        if other != path:
            other.unlink(missing_ok=True)
