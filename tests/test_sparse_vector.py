"""SVT: ε split, noise scales and ε arithmetic against hand-computed values; halting; the SVT ledger."""

from __future__ import annotations

import numpy as np
import pytest

from common.privacy import PrivacyBudgetExceeded
from common.privacy.sparse_vector import SvtScales, noise_scales, sparse_vector, split_epsilon, svt_epsilon
from common.privacy.svt_ledger import SVT_LEDGER_FILE, SvtLedger


def test_split_follows_lyu_et_al_ratio():
    # c = 4: (2c)^(2/3) = 8^(2/3) = 4, so ε1 : ε2 = 1 : 4 of the 60 % left after values.
    eps1, eps2, eps3 = split_epsilon(10.0, c=4, value_share=0.4)
    assert (eps1, eps2, eps3) == pytest.approx((1.2, 4.8, 4.0))
    assert eps1 + eps2 + eps3 == pytest.approx(10.0)


def test_noise_scales_hand_computed():
    # γ = 0.5, c = 4: threshold γ/ε1 = 0.5/1.2; comparisons 2cγ/ε2 = 4/4.8; values 2cγ/ε3 = 4/4.
    s = noise_scales(gamma=0.5, c=4, eps1=1.2, eps2=4.8, eps3=4.0)
    assert (s.threshold, s.query, s.value) == pytest.approx((0.5 / 1.2, 4 / 4.8, 1.0))


def test_epsilon_from_parameters_inverts_the_split():
    assert svt_epsilon(SvtScales(threshold=0.5 / 1.2, query=4 / 4.8, value=1.0), gamma=0.5, c=4) == pytest.approx(10.0)
    for eps, c, share in [(1e6, 58_579, 0.5), (3.0, 1, 0.1), (100.0, 1000, 0.9)]:
        e1, e2, e3 = split_epsilon(eps, c=c, value_share=share)
        assert svt_epsilon(noise_scales(gamma=0.3, c=c, eps1=e1, eps2=e2, eps3=e3), gamma=0.3, c=c) == pytest.approx(eps)
    # Doubling every noise scale halves ε (pure ε-DP Laplace mechanisms).
    assert svt_epsilon(SvtScales(2 * 0.5 / 1.2, 2 * 4 / 4.8, 2.0), gamma=0.5, c=4) == pytest.approx(5.0)


def test_split_rejects_bad_parameters():
    with pytest.raises(ValueError, match="value_share"):
        split_epsilon(1.0, c=3, value_share=1.0)


def test_svt_halts_at_c_and_releases_clipped_values():
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 1, 10_000)
    scales = SvtScales(threshold=1e-3, query=1e-3, value=1e-3)  # almost no noise
    idx, values = sparse_vector(delta, gamma=0.5, tau=0.45, c=50, scales=scales, max_passes=3, rng=rng)
    assert idx.size == 50 and np.unique(idx).size == 50
    assert np.all(np.abs(delta[idx]) >= 0.44)  # only coordinates above the threshold
    assert np.all(np.abs(values) <= 0.5)
    assert np.allclose(values, np.clip(delta[idx], -0.5, 0.5), atol=0.02)


def test_svt_with_little_noise_prefers_large_coordinates_and_with_much_noise_does_not():
    rng = np.random.default_rng(1)
    delta = np.concatenate([np.full(100, 0.5), np.zeros(900)])
    quiet = SvtScales(threshold=0.01, query=0.01, value=0.01)
    idx, _ = sparse_vector(delta, gamma=0.5, tau=0.25, c=100, scales=quiet, max_passes=5, rng=rng)
    assert (idx < 100).mean() > 0.95
    loud = SvtScales(threshold=0.01, query=50.0, value=0.01)
    idx, _ = sparse_vector(delta, gamma=0.5, tau=0.25, c=100, scales=loud, max_passes=5, rng=rng)
    assert (idx < 100).mean() < 0.3  # close to the 10 % of random selection


def test_svt_gives_up_after_max_passes():
    delta = np.zeros(1000)  # nothing is above the threshold
    scales = SvtScales(threshold=1e-6, query=1e-6, value=1e-6)
    idx, values = sparse_vector(delta, gamma=0.5, tau=0.4, c=10, scales=scales, max_passes=2, rng=np.random.default_rng(2))
    assert idx.size == 0 and values.size == 0


def test_svt_value_noise_has_the_laplace_scale():
    delta = np.zeros(200_000)
    scales = SvtScales(threshold=1e-9, query=1e-9, value=0.01)
    idx, values = sparse_vector(delta, gamma=1.0, tau=0.0, c=100_000, scales=scales, max_passes=1,
                                rng=np.random.default_rng(3))
    # Laplace(b): E|X| = b (values are far from the clip at γ = 1).
    assert idx.size == 100_000
    assert np.mean(np.abs(values)) == pytest.approx(0.01, rel=0.02)


def test_ledger_composes_rounds_and_refuses_over_budget(tmp_path):
    ledger = SvtLedger.restore(site="hospital_a", state_dir=tmp_path)
    for r in (1, 2):
        ledger.check(3.0, budget=7.0)
        ledger.record(r, 3.0)
        ledger.save(tmp_path)
    assert ledger.epsilon == 6.0
    with pytest.raises(PrivacyBudgetExceeded, match="over its budget 7"):
        ledger.check(3.0, budget=7.0)
    # A restarted site continues from disk; the larger of cache and disk wins.
    restored = SvtLedger.restore(site="hospital_a", state_dir=tmp_path, cached=SvtLedger("hospital_a", [(1, 3.0)]).to_json())
    assert restored.epsilon == 6.0 and (tmp_path / SVT_LEDGER_FILE).exists()
    with pytest.raises(ValueError, match="hospital_b"):
        SvtLedger.restore(site="hospital_b", state_dir=tmp_path)
