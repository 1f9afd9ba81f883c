"""Gradient inversion on a tiny case: it must single out the patient without DP and fail with it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from common.audit.image_metrics import psnr, reidentified, ssim, standardise
from common.audit.inversion_audit import run_inversion_audit


@pytest.fixture
def tiny_audit(tiny_config):
    def make(*overrides: str):
        cfg = tiny_config(
            "model=small_cnn",
            "federation.sites.hospital_a.data.num_train=110",
            *overrides,
        )
        audit = {"name": "inversion", "site": "hospital_a", "settings": ["none", "dp"], "targets": 2, "pool": 100,
                 "cases": [{"trainable": "all", "batch": 1}], "iterations": 60, "learning_rate": 0.1, "tv_weight": 0.01}
        return OmegaConf.merge(cfg, {"audit": audit})

    return make


def test_attack_singles_out_patients_without_dp_and_not_with_it(tiny_audit):
    torch.set_num_threads(1)  # many small double-backward passes: one thread is fastest
    report = run_inversion_audit(tiny_audit(), progress=False)
    none, dp = report.case("all", 1, "none"), report.case("all", 1, "dp")
    assert report.chance == pytest.approx(0.01)
    # Positive control: every undefended reconstruction is closer to its own patient than to the 99 others.
    assert none.reid == 1.0
    # The site's calibrated σ (ε = 8 over the planned rounds) on the same images.
    assert report.noise_multiplier > 0.3
    assert dp.reid == 0.0


def test_reidentification_needs_strictly_closest():
    pool = torch.randn(5, 1, 8, 8)
    recs = pool[[1, 3]] * 3.0 + 1.0  # same content, other brightness scale: standardisation undoes it
    assert reidentified(recs, pool, torch.tensor([1, 3])).tolist() == [True, True]
    assert reidentified(recs, pool, torch.tensor([0, 3])).tolist() == [False, True]


def test_image_metrics_on_identical_and_unrelated_images():
    x = torch.rand(3, 1, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert (psnr(x, x) > 80).all()
    assert (ssim(torch.rand(3, 1, 16, 16), x) < 0.5).all()
    assert torch.allclose(standardise(x).flatten(1).mean(1), torch.zeros(3), atol=1e-5)


def test_pool_smaller_than_100_is_refused(tiny_audit):
    cfg = OmegaConf.merge(tiny_audit(), {"audit": {"pool": 50}})
    with pytest.raises(ValueError, match="audit.pool must be >= 100"):
        run_inversion_audit(cfg, progress=False)
