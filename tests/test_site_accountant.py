"""The site's ledger: ε against an independent accountant, persistence, budget refusal."""

from __future__ import annotations

import json

import pytest
from independent_accounting import sample_level_epsilon

from common.privacy import PrivacyBudgetExceeded, SiteAccountant, calibrate_noise_multiplier
from common.privacy.site_accountant import LEDGER_FILE


def _ledger(**kw) -> SiteAccountant:
    return SiteAccountant(site="hospital_a", mechanism="rdp", delta=1e-5, **kw)


def test_epsilon_matches_independent_accountant_across_rounds_and_restarts(tmp_path):
    rounds = [(1.1, 0.1, 10)] * 4
    for sigma, q, steps in rounds:
        # A new process each round: restore from disk, take steps, save.
        ledger = SiteAccountant.restore(site="hospital_a", mechanism="rdp", delta=1e-5, state_dir=tmp_path)
        accountant = ledger.opacus_accountant()
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
        ledger.absorb(accountant)
        ledger.save(tmp_path)
    final = SiteAccountant.restore(site="hospital_a", mechanism="rdp", delta=1e-5, state_dir=tmp_path)
    assert final.steps == 40
    expected = sample_level_epsilon([(1.1, 0.1, 40)], 1e-5)
    assert final.epsilon() == pytest.approx(expected, rel=0.03)
    # One round alone is far less: a reset accountant would be caught.
    assert final.epsilon() > 1.5 * sample_level_epsilon([(1.1, 0.1, 10)], 1e-5)


def test_epsilon_is_zero_before_training():
    assert _ledger().epsilon() == 0.0


def test_check_budget_refuses_without_changing_the_ledger():
    ledger = _ledger(history=[(1.0, 0.1, 50)])
    before = ledger.epsilon()
    with pytest.raises(PrivacyBudgetExceeded, match="hospital_a.*budget ε=3"):
        ledger.check_budget(budget=3.0, noise_multiplier=1.0, sample_rate=0.1, steps=10)
    assert ledger.history == [(1.0, 0.1, 50)]
    assert ledger.epsilon() == before
    assert ledger.check_budget(budget=100.0, noise_multiplier=1.0, sample_rate=0.1, steps=10) > before


def test_restore_prefers_the_copy_with_more_steps(tmp_path):
    _ledger(history=[(1.0, 0.1, 10)]).save(tmp_path)
    newer = _ledger(history=[(1.0, 0.1, 20)]).to_json()
    restored = SiteAccountant.restore(site="hospital_a", mechanism="rdp", delta=1e-5, state_dir=tmp_path, cached=newer)
    assert restored.steps == 20
    older = _ledger(history=[(1.0, 0.1, 5)]).to_json()
    restored = SiteAccountant.restore(site="hospital_a", mechanism="rdp", delta=1e-5, state_dir=tmp_path, cached=older)
    assert restored.steps == 10


def test_corrupt_ledger_is_an_error_not_a_reset(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable.*refusing to reset"):
        SiteAccountant.restore(site="hospital_a", mechanism="rdp", delta=1e-5, state_dir=tmp_path)


def test_ledger_of_other_configuration_is_rejected(tmp_path):
    _ledger(history=[(1.0, 0.1, 10)]).save(tmp_path)
    with pytest.raises(ValueError, match="does not match"):
        SiteAccountant.restore(site="hospital_a", mechanism="rdp", delta=1e-6, state_dir=tmp_path)


def test_absorb_refuses_a_shrinking_history():
    ledger = _ledger(history=[(1.0, 0.1, 10)])
    fresh = _ledger().opacus_accountant()
    fresh.history = []
    with pytest.raises(ValueError, match="lost steps"):
        ledger.absorb(fresh)


def test_save_is_atomic_json(tmp_path):
    path = _ledger(history=[(1.0, 0.1, 3)], noise_multiplier=1.0).save(tmp_path)
    data = json.loads(path.read_text())
    assert data["history"] == [[1.0, 0.1, 3]] and data["noise_multiplier"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == [LEDGER_FILE]


def test_unknown_accountant_is_named():
    with pytest.raises(ValueError, match="unknown privacy accountant 'moments'.*rdp, prv, gdp"):
        SiteAccountant(site="x", mechanism="moments", delta=1e-5)


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_calibrated_sigma_meets_target_per_independent_accountant(target):
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=0.1, steps=100)
    eps = sample_level_epsilon([(sigma, 0.1, 100)], 1e-5)
    assert eps <= target * 1.03
    assert eps >= target * 0.9  # not wastefully noisy either


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"target_epsilon": -1.0}, "target_epsilon must be > 0, got -1.0"),
        ({"delta": 1.5}, "delta must be in"),
        ({"sample_rate": 0.0}, "sample_rate must be in"),
        ({"steps": 0}, "steps must be >= 1"),
    ],
)
def test_calibration_rejects_bad_arguments(kwargs, match):
    args = {"target_epsilon": 8.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10} | kwargs
    with pytest.raises(ValueError, match=match):
        calibrate_noise_multiplier(**args)
