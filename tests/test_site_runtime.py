"""A site's round: DP-SGD steps accounted, budget refusals, restarts, unwrapped weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from independent_accounting import sample_level_epsilon

from client.site_runtime import SiteRuntime
from common.models import exchanged_state, frozen_digest, initial_model
from common.privacy import PrivacyBudgetExceeded
from common.privacy.site_accountant import LEDGER_FILE


def _initial_state(cfg):
    return exchanged_state(initial_model(cfg.model, cfg.seed))


def test_rounds_accumulate_and_match_independent_accountant(tiny_config):
    cfg = tiny_config()
    state = _initial_state(cfg)
    site = SiteRuntime(cfg, "hospital_a")
    q, per_round = site.steps_per_round()
    assert q == pytest.approx(16 / 64) and per_round == 4
    cached = None
    for r in (1, 2, 3):
        out = site.train_round(state, server_round=r, planned_rounds=3, cached_ledger=cached)
        cached = out.ledger_json
        assert out.metrics["steps"] == r * per_round
    sigma = out.metrics["noise-multiplier"]
    expected = sample_level_epsilon([(sigma, q, 3 * per_round)], cfg.privacy.delta)
    assert out.metrics["eps-sample"] == pytest.approx(expected, rel=0.03)
    # Calibrated for 3 rounds: the full plan lands just under the site's budget.
    assert 0.9 * cfg.privacy.target_epsilon < out.metrics["eps-sample"] <= cfg.privacy.target_epsilon


def test_restarted_site_continues_from_disk(tiny_config):
    cfg = tiny_config()
    state = _initial_state(cfg)
    SiteRuntime(cfg, "hospital_b").train_round(state, server_round=1, planned_rounds=2, cached_ledger=None)
    # A new runtime (a restarted SuperNode) with no node-state cache: the disk ledger is used.
    out = SiteRuntime(cfg, "hospital_b").train_round(state, server_round=2, planned_rounds=2, cached_ledger=None)
    assert out.metrics["steps"] == 8


def test_site_refuses_round_beyond_budget_and_keeps_ledger(tiny_config):
    # σ=1.5, q=1/4, 4 steps a round: ε≈2.5, 3.2, 3.8 after rounds 1-3, then 4.7 > 4.
    cfg = tiny_config("privacy.noise_multiplier=1.5", "privacy.target_epsilon=4.0")
    state = _initial_state(cfg)
    site = SiteRuntime(cfg, "hospital_c")
    out = site.train_round(state, server_round=1, planned_rounds=5, cached_ledger=None)
    eps_after_first = out.metrics["eps-sample"]
    with pytest.raises(PrivacyBudgetExceeded, match="hospital_c.*above its budget ε=4"):
        for r in range(2, 10):
            out = site.train_round(state, server_round=r, planned_rounds=5, cached_ledger=None)
    ledger = site.load_ledger(None)
    assert ledger.epsilon() <= 4.0
    assert ledger.epsilon() >= eps_after_first


def test_update_is_unwrapped_and_only_the_trained_part(tiny_config):
    cfg = tiny_config()
    model = initial_model(cfg.model, cfg.seed)
    state = exchanged_state(model)
    out = SiteRuntime(cfg, "hospital_a").train_round(
        state, server_round=1, planned_rounds=1, cached_ledger=None, frozen_sha256=frozen_digest(model)
    )
    assert not any(k.startswith("_module.") for k in out.state)
    assert set(out.state) == set(state)
    # GroupNorm affine params (named bn*/downsample.1 after the BatchNorm swap) and the head only.
    assert all("bn" in k or k.startswith("fc.") or "downsample.1" in k for k in out.state)
    assert sum(v.numel() for v in out.state.values()) < 20_000
    assert any(not torch.equal(state[k], out.state[k]) for k in state)
    model.load_state_dict(model.state_dict() | out.state, strict=True)


def test_mismatched_frozen_weights_are_refused(tiny_config):
    cfg = tiny_config()
    with pytest.raises(ValueError, match="hospital_a: frozen weights differ"):
        SiteRuntime(cfg, "hospital_a").train_round(
            _initial_state(cfg), server_round=1, planned_rounds=1, cached_ledger=None, frozen_sha256="0" * 64
        )


def test_weights_of_another_model_are_refused(tiny_config):
    cfg = tiny_config()
    wrong = exchanged_state(initial_model(tiny_config("model=small_cnn").model, cfg.seed))
    with pytest.raises(ValueError, match="hospital_a: received weights do not match the model"):
        SiteRuntime(cfg, "hospital_a").evaluate_round(wrong)


def test_nan_global_weights_are_refused(tiny_config):
    cfg = tiny_config()
    state = _initial_state(cfg)
    state["fc.weight"] = torch.full_like(state["fc.weight"], math.nan)
    with pytest.raises(ValueError, match="hospital_a: received weights contain NaN/inf.*fc.weight"):
        SiteRuntime(cfg, "hospital_a").train_round(state, server_round=1, planned_rounds=1, cached_ledger=None)


def test_evaluate_reports_auc_and_segmentation_dice_per_class(tiny_config):
    cfg = tiny_config()
    site = SiteRuntime(cfg, "hospital_a")
    metrics = site.evaluate_round(_initial_state(cfg))
    # Every image of the 48 test patients (1-3 images each) is evaluated.
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["num-examples"] == len(site.data.test) > 48
    seg = tiny_config("task=segmentation")
    metrics = SiteRuntime(seg, "hospital_a").evaluate_round(_initial_state(seg))
    assert {"dice", "dice.liver", "dice.lesion", "loss"} <= set(metrics)


@pytest.mark.parametrize("reproducible", [False, True])
def test_dp_noise_is_unpredictable_unless_reproducibility_is_asked_for(tiny_config, tmp_path, reproducible):
    """Noise seeded from the config could be regenerated by the coordinator and subtracted."""
    updates = []
    for run in ("first", "second"):
        cfg = tiny_config(f"privacy.reproducible_noise={str(reproducible).lower()}", f"state_root={tmp_path / run}")
        out = SiteRuntime(cfg, "hospital_a").train_round(
            _initial_state(cfg), server_round=1, planned_rounds=2, cached_ledger=None
        )
        updates.append(out.state)
    same = all(torch.equal(updates[0][k], updates[1][k]) for k in updates[0])
    assert same is reproducible


def test_non_private_round_trains_without_opacus_ledger_or_epsilon(tiny_config):
    cfg = tiny_config("privacy=none")
    state = _initial_state(cfg)
    out = SiteRuntime(cfg, "hospital_a").train_round(state, server_round=1, planned_rounds=1, cached_ledger=None)
    assert out.ledger_json is None
    assert not {"eps-sample", "noise-multiplier", "sample-rate"} & set(out.metrics)
    assert out.metrics["steps"] == 4  # ⌈64 / 16⌉, as many steps as DP-SGD takes
    assert any(not torch.equal(state[k], out.state[k]) for k in state)


def _real_files_config(tiny_config, tmp_path, *extra):
    """hospital_a reads files it did not synthesize (written here once, then read as real)."""
    root = tmp_path / "real_xrays"
    seeded = tiny_config(f"federation.sites.hospital_a.data.root={root}")
    SiteRuntime(seeded, "hospital_a").data  # writes privmed's synthetic files at root
    return tiny_config(
        "privacy=none", f"federation.sites.hospital_a.data.root={root}",
        "+federation.sites.hospital_a.data.synthesize=false", *extra,
    )


def test_non_private_training_is_refused_on_real_files_unless_the_site_allows_it(tiny_config, tmp_path):
    from common.federation_config import NonPrivateRefused

    cfg = _real_files_config(tiny_config, tmp_path)
    state = _initial_state(cfg)
    with pytest.raises(NonPrivateRefused, match="site hospital_a reads real patient files and refuses privacy=none"):
        SiteRuntime(cfg, "hospital_a").train_round(state, server_round=1, planned_rounds=1, cached_ledger=None)
    # Synthetic sites of the same run train; the hospital's own consent unlocks its real files.
    SiteRuntime(cfg, "hospital_b").train_round(state, server_round=1, planned_rounds=1, cached_ledger=None)
    allowed = _real_files_config(tiny_config, tmp_path, "federation.sites.hospital_a.allow_non_private=true")
    out = SiteRuntime(allowed, "hospital_a").train_round(state, server_round=1, planned_rounds=1, cached_ledger=None)
    assert out.ledger_json is None


def test_a_round_asked_again_on_the_same_model_resends_the_stored_update(tiny_config):
    """A resumed coordinator repeats its unfinished round: the site pays for it once."""
    cfg = tiny_config()
    state = _initial_state(cfg)
    site = SiteRuntime(cfg, "hospital_a")
    first = site.train_round(state, server_round=1, planned_rounds=2, cached_ledger=None)
    again = SiteRuntime(cfg, "hospital_a").train_round(state, server_round=1, planned_rounds=2, cached_ledger=None)
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    assert again.metrics == first.metrics and site.load_ledger(None).steps == 4
    # Another global model for the same round is new training (and new spending).
    moved = {k: v + 0.01 for k, v in state.items()}
    other = site.train_round(moved, server_round=1, planned_rounds=2, cached_ledger=None)
    assert other.metrics["steps"] == 8


def test_an_update_whose_ledger_was_never_written_is_not_resent(tiny_config):
    """Killed between the two writes: the update never left the site, so the site trains again."""
    cfg = tiny_config()
    state = _initial_state(cfg)
    site = SiteRuntime(cfg, "hospital_b")
    site.train_round(state, server_round=1, planned_rounds=2, cached_ledger=None)
    (Path(site.view.state_dir) / LEDGER_FILE).unlink()
    out = site.train_round(state, server_round=1, planned_rounds=2, cached_ledger=None)
    assert out.metrics["steps"] == 4 and site.load_ledger(None).steps == 4


def test_site_uses_its_configured_threads_and_refuses_a_bad_count(tiny_config):
    from common.federation_config import ConfigError, validate_config

    cfg = tiny_config("model=small_cnn", "+federation.sites.hospital_b.training.num_threads=1")
    torch.set_num_threads(2)
    SiteRuntime(cfg, "hospital_a").evaluate_round(_initial_state(cfg))
    assert torch.get_num_threads() == 2  # null: torch's default left alone
    SiteRuntime(cfg, "hospital_b").evaluate_round(_initial_state(cfg))
    assert torch.get_num_threads() == 1  # the site's own setting
    torch.set_num_threads(2)
    with pytest.raises(ConfigError, match=r"hospital_c: training.num_threads must be an integer >= 1 or null, got 0"):
        validate_config(tiny_config("+federation.sites.hospital_c.training.num_threads=0"))
