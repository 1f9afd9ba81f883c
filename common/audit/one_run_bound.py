"""Empirical ε lower bound from one training run (Steinke, Nasr & Jagielski, NeurIPS 2023).

m canaries are each included independently with probability 1/2. After training, the auditor
guesses "in" for the r₊ highest-scoring canaries, "out" for the r₋ lowest and abstains on the
rest; v of its r = r₊ + r₋ guesses are right. Under the null hypothesis "the training is
(ε, δ)-DP", the paper's main theorem bounds the chance of v or more correct guesses:

    P[W ≥ v] ≤ P[Bin(r, q) ≥ v] + 2 m δ · max_{i=1..v} P[v > Bin(r, q) ≥ v − i] / i,
    q = e^ε / (1 + e^ε),

and the audit reports the largest ε whose p-value is still below 1 − confidence: the training
cannot be (ε, δ)-DP for any smaller ε, except with probability 1 − confidence.

Choosing among several guess sizes (or scores) after looking at the result is a multiple
test: :func:`best_eps_lower_bound` splits the confidence over every combination tried
(Bonferroni), so the reported bound keeps its stated confidence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

# Binary search steps: the bound is exact to 2^-40 of its bracket.
_SEARCH_STEPS = 40


def p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[≥ v correct of r guesses] for an (ε, δ)-DP training with m canaries (the theorem's bound).

    Raises
    ------
    ValueError
        Unless 0 ≤ v ≤ r ≤ m, ε ≥ 0 and 0 ≤ δ ≤ 1.
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and 0 <= delta <= 1, got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of ε-DP randomised response
    tail = float(binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    # The δ term: max over i of P[v > Bin(r, q) >= v - i] / i.
    window = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q)) if v > 0 else np.zeros(0)
    alpha = float(np.max(window / np.arange(1, v + 1))) if v > 0 else 0.0
    return min(tail + alpha * delta * 2 * m, 1.0)


def eps_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """Largest ε with p-value < 1 − ``confidence``: the training is not (ε, δ)-DP (0 if none).

    Raises
    ------
    ValueError
        If ``confidence`` is not in (0, 1) or the counts are inconsistent.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    if p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0  # p(low) < alpha <= p(high)
    while p_value(m=m, r=r, v=v, epsilon=high, delta=delta) < alpha:
        high += 1.0
    for _ in range(_SEARCH_STEPS):
        mid = (low + high) / 2
        if p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < alpha:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class AuditBound:
    """The best bound found: ε lower bound, and the guesses it rests on."""

    eps_lower: float
    guesses: int
    correct: int
    tests: int


def guesses(scores: np.ndarray, included: np.ndarray, *, k: int) -> tuple[int, int]:
    """(r, v) when guessing "in" for the k highest and "out" for the k lowest scores.

    ``scores`` are larger for canaries that look included; ``k`` ≤ m/2.
    """
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    inc = np.asarray(included, dtype=bool)[order]
    return 2 * k, int(inc[:k].sum() + (~inc[len(inc) - k :]).sum())


def best_eps_lower_bound(
    score_sets: Sequence[np.ndarray],
    included: np.ndarray,
    *,
    guess_fractions: Sequence[float],
    delta: float,
    confidence: float = 0.95,
) -> AuditBound:
    """The largest bound over scores × guess sizes, each test at the Bonferroni-split confidence.

    ``guess_fractions``: share of the m canaries guessed (half "in", half "out"), e.g. 0.1, 1.0.
    """
    m = len(included)
    tests = len(score_sets) * len(guess_fractions)
    per_test = 1.0 - (1.0 - confidence) / tests
    best = AuditBound(0.0, 0, 0, tests)
    for scores in score_sets:
        for fraction in guess_fractions:
            k = max(1, int(round(fraction * m / 2)))
            r, v = guesses(scores, included, k=min(k, m // 2))
            eps = eps_lower_bound(m=m, r=r, v=v, delta=delta, confidence=per_test)
            if eps > best.eps_lower:
                best = AuditBound(eps, r, v, tests)
    return best
