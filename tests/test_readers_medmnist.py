"""MedMNIST .npz files: splits, label mapping, one image = one unit, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import classification_cfg, xray_patients

from common.data import DataError, build_site_data
from common.data.errors import BadFiles
from common.data.medmnist import read_medmnist
from common.data.synthetic_files import write_medmnist


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    arrays |= overrides
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _read(path, **data):
    task, cfg = classification_cfg("medmnist", root=str(path), **data)
    return read_medmnist(path, task=task, data=cfg, bad=BadFiles())


def test_reads_every_split_and_each_image_is_its_own_unit(tmp_path):
    samples = _read(_npz(tmp_path / "pneumoniamnist.npz"))
    assert len(samples) == 11 and len({s.patient for s in samples}) == 11
    assert [s.split for s in samples].count("val") == 2
    assert samples[1].target == 1 and samples[0].image.shape == (16, 16)
    task, data = classification_cfg("medmnist", root=str(tmp_path))  # a folder holding one .npz
    site = build_site_data(task, data)
    assert site.num_train_patients == 8 and len(site.test) == 3


def test_colour_images_and_label_map(tmp_path):
    rgb = np.zeros((3, 28, 28, 3), np.uint8)
    path = _npz(tmp_path / "x.npz", test_images=rgb, test_labels=np.array([[0], [3], [5]]))
    samples = _read(path, label_map={0: 0, 1: 1, 3: 1, 5: 0})
    assert [s.target for s in samples if s.split == "test"] == [0, 1, 0]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"test_labels": None}, "missing key 'test_labels'"),
        ({"train_labels": np.array([[0], [1], [2], [0], [1], [0]])}, r"train_labels\): unknown label value\(s\) \[2\]"),
        ({"train_labels": np.zeros((5, 1))}, "train: 6 images but labels of shape \\(5, 1\\)"),
    ],
    ids=["missing-label", "unknown-label", "shape-mismatch"],
)
def test_bad_npz_names_the_file_and_the_problem(tmp_path, overrides, match):
    with pytest.raises(DataError, match=f"x.npz.*{match}"):
        _read(_npz(tmp_path / "x.npz", **overrides))


def test_corrupt_or_missing_file(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DataError, match="x.npz: unreadable .npz file"):
        _read(tmp_path / "x.npz")
    with pytest.raises(DataError, match="expected one MedMNIST .npz file .*found 0"):
        _read(tmp_path / "empty")


def test_synthetic_medmnist_round_trip(tmp_path):
    patients = xray_patients()
    write_medmnist(tmp_path / "s.npz", patients)
    samples = _read(tmp_path / "s.npz")
    assert len(samples) == len(patients.images)
    assert sorted(s.target for s in samples) == sorted(patients.labels[patients.owner].tolist())
