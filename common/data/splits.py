"""Patient-disjoint train/test splits: the layout's own folders, or a seeded split by patient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.errors import DataError
from common.data.patients import Sample

SPLITS = ("auto", "folders", "by_patient")
# Folder splits pooled into training: the public archives' tiny val folders are not held out here.
TRAIN_FOLDERS = ("train", "val")


def split_samples(
    samples: Sequence[Sample], *, mode: str, test_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, test) samples; no patient is in both.

    Parameters
    ----------
    mode : str
        ``folders``: the layout's ``train``/``val`` vs ``test``; a patient found in two splits is
        refused. ``by_patient``: patients shuffled with ``seed``, ``test_fraction`` of them held
        out. ``auto``: ``folders`` when every sample has a folder split, else ``by_patient``.

    Raises
    ------
    DataError
        If a patient id appears in both folder splits, or a split ends up empty.
    """
    if mode not in SPLITS:
        raise ValueError(f"data.split must be one of {SPLITS}, got {mode!r}")
    has_folders = bool(samples) and all(s.split is not None for s in samples)
    if mode == "auto":
        mode = "folders" if has_folders else "by_patient"
    if mode == "folders":
        if not has_folders:
            first = next(s for s in samples if s.split is None)
            raise DataError(first.source, "this layout has no train/test folders; set data.split: by_patient")
        train = [s for s in samples if s.split in TRAIN_FOLDERS]
        test = [s for s in samples if s.split == "test"]
        _check_disjoint(train, test)
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction}")
        ids = sorted({s.patient for s in samples})
        order = np.random.default_rng(seed).permutation(len(ids))
        n_test = min(max(1, round(test_fraction * len(ids))), len(ids) - 1)
        test_ids = {ids[i] for i in order[:n_test]}
        train = [s for s in samples if s.patient not in test_ids]
        test = [s for s in samples if s.patient in test_ids]
    for name, part in (("train", train), ("test", test)):
        if not part:
            where = samples[0].source if samples else "data.root"
            raise DataError(where, f"the {name} split has no images (found {len(samples)} in all)")
    return train, test


def _check_disjoint(train: Sequence[Sample], test: Sequence[Sample]) -> None:
    seen = {s.patient: s.source for s in train}
    for s in test:
        if s.patient in seen:
            raise DataError(
                s.source,
                f"patient {s.patient!r} is in both the train and test folders (also {seen[s.patient]}); "
                "fix the folders or set data.split: by_patient",
            )
