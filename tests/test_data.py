"""Synthetic data: seeded, site-specific, with a real but imperfect signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from common.data import build_site_data
from common.data.synthetic_ct import BACKGROUND, LESION, LIVER, make_ct_slices
from common.data.synthetic_xray import make_xray_images
from common.federation_config import site_view

XRAY = dict(image_size=32, intensity_shift=0.0, intensity_scale=1.0, noise_std=0.08, label_noise=0.03)
CT = dict(image_size=64, intensity_shift=0.0, intensity_scale=1.0, noise_std=0.05)


def test_xray_is_seeded_and_follows_class_mix():
    a, ya = make_xray_images(400, positive_fraction=0.3, seed=1, **XRAY)
    b, yb = make_xray_images(400, positive_fraction=0.3, seed=1, **XRAY)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert a.shape == (400, 1, 32, 32) and a.dtype == np.float32
    assert 0.22 < ya.mean() < 0.38
    c, _ = make_xray_images(400, positive_fraction=0.3, seed=2, **XRAY)
    assert not np.allclose(a, c)


def test_xray_signal_is_learnable_but_not_trivial():
    x, y = make_xray_images(1200, positive_fraction=0.5, seed=3, **XRAY)
    flat = x.reshape(len(x), -1)
    clf = LogisticRegression(max_iter=300, C=0.05).fit(flat[:800], y[:800])
    auc = roc_auc_score(y[800:], clf.decision_function(flat[800:]))
    assert 0.6 < auc < 0.97  # a pixel-level linear model sees something, not everything


def test_ct_masks_are_consistent_with_anatomy():
    images, labels = make_ct_slices(1000, lesion_fraction=0.6, seed=4, **CT)
    assert images.shape == (1000, 1, 64, 64) and labels.shape == (1000, 64, 64)
    assert set(np.unique(labels)) == {BACKGROUND, LIVER, LESION}
    has_lesion = (labels == LESION).any(axis=(1, 2))
    assert 0.45 < has_lesion.mean() < 0.75
    # Lesions sit inside the liver: lesion slices show liver around the lesion (a small liver
    # may now and then be covered by its lesion entirely).
    assert (labels == LIVER).any(axis=(1, 2))[has_lesion].mean() > 0.97


def test_in_memory_site_data_is_one_image_per_patient_and_standardised(tiny_config):
    cfg = tiny_config("++federation.sites.hospital_a.data.format=synthetic")
    data = build_site_data(cfg.task, site_view(cfg, "hospital_a").data)
    assert data.num_train_patients == 64 and data.train.num_images == 64 and len(data.test) == 48
    x = torch.stack([p.images[0] for p in data.train.patients])
    assert np.allclose(x.mean(dim=(1, 2, 3)).numpy(), 0, atol=1e-4)


def test_default_site_data_goes_through_the_kermany_reader(tiny_config):
    cfg = tiny_config()
    view = site_view(cfg, "hospital_a").data
    assert view.format == "kermany" and view.synthesize
    data = build_site_data(cfg.task, view)
    # num_train/num_test count patients; each has 1-3 images of its class.
    assert data.num_train_patients == 64
    assert 64 < data.train.num_images <= 3 * 64 and 48 < len(data.test) <= 3 * 48
    assert (Path(view.root) / "train" / "PNEUMONIA").is_dir() and "NORMAL" in data.summary
    images, _ = data.test.tensors
    assert np.allclose(images.mean(dim=(1, 2, 3)).numpy(), 0, atol=1e-4)


def test_site_intensity_shift_changes_raw_pixels():
    a, _ = make_xray_images(10, positive_fraction=0.5, seed=5, **XRAY)
    b, _ = make_xray_images(10, positive_fraction=0.5, seed=5, **(XRAY | {"intensity_shift": 0.1, "intensity_scale": 1.2}))
    np.testing.assert_allclose(b, 1.2 * a + 0.1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [{"positive_fraction": 1.5}, {"image_size": 8}])
def test_bad_generator_arguments_are_named(bad):
    args = dict(XRAY, positive_fraction=0.5, seed=0) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        make_xray_images(10, **args)


def test_unknown_format_is_named(tiny_config):
    cfg = tiny_config("++federation.sites.hospital_a.data.format=dicom")
    with pytest.raises(ValueError, match="data.format must be one of .*synthetic.*kermany.*'dicom'"):
        build_site_data(cfg.task, site_view(cfg, "hospital_a").data)
