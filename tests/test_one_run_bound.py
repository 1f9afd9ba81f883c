"""The one-run ε lower bound (Steinke, Nasr & Jagielski 2023) against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from common.audit.one_run_bound import best_eps_lower_bound, eps_lower_bound, guesses, p_value


@pytest.mark.parametrize("r", [10, 100, 1000])
def test_pure_dp_all_correct_matches_the_closed_form(r):
    # δ = 0: the theorem is P[Bin(r, q) >= v]; with v = r that is q^r, so at 95% confidence
    # ε = logit(0.05^(1/r)) exactly (r = 100 guesses, all right: ε >= 3.49).
    q = 0.05 ** (1 / r)
    assert eps_lower_bound(m=r, r=r, v=r, delta=0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-9)


def test_worked_numbers_with_delta():
    # m = 500 canaries, δ = 1e-5: 100 of 100 guesses right gives ε >= 3.479 at 95% and 3.023 at 99%;
    # 23 of 35 gives 0.0145 and 60 of 100 gives 0.0507 (values of an independent implementation
    # of the paper's algorithm, published with a DP language-model audit).
    assert eps_lower_bound(m=500, r=100, v=100, delta=1e-5) == pytest.approx(3.4791953936, abs=1e-6)
    assert eps_lower_bound(m=500, r=100, v=100, delta=1e-5, confidence=0.99) == pytest.approx(3.0231975541, abs=1e-6)
    assert eps_lower_bound(m=500, r=35, v=23, delta=1e-5) == pytest.approx(0.0145487199, abs=1e-6)
    assert eps_lower_bound(m=500, r=100, v=60, delta=1e-5) == pytest.approx(0.0507356105, abs=1e-6)


def test_p_value_delta_term_is_the_theorems():
    m, r, v, eps, delta = 200, 40, 30, 1.0, 1e-3
    q = 1 / (1 + math.exp(-eps))
    # max over i of P[v > Bin(r, q) >= v - i] / i, written out term by term.
    alpha = max(sum(binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1))
    assert p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(binom.sf(v - 1, r, q) + 2 * m * delta * alpha)


def test_chance_level_guessing_gives_no_bound():
    assert eps_lower_bound(m=100, r=100, v=50, delta=1e-5) == 0.0


def test_guesses_take_top_in_and_bottom_out():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, True, False, True, False, False])
    assert guesses(scores, included, k=2) == (4, 4)
    assert guesses(scores, included, k=3) == (6, 4)


def test_best_bound_pays_for_every_test_tried():
    included = np.array([True, False] * 50)
    perfect = included.astype(float)
    single = best_eps_lower_bound([perfect], included, guess_fractions=[1.0], delta=0.0)
    split = best_eps_lower_bound([perfect, perfect], included, guess_fractions=[1.0, 0.5], delta=0.0)
    assert single.eps_lower == pytest.approx(eps_lower_bound(m=100, r=100, v=100, delta=0.0))
    assert split.tests == 4 and 0 < split.eps_lower < single.eps_lower
    assert split.eps_lower == pytest.approx(eps_lower_bound(m=100, r=100, v=100, delta=0.0, confidence=1 - 0.05 / 4))


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="v <= r <= m"):
        p_value(m=10, r=20, v=5, epsilon=1.0, delta=0.0)
    with pytest.raises(ValueError, match="confidence"):
        eps_lower_bound(m=10, r=10, v=10, delta=0.0, confidence=1.5)
