"""The sparse vector technique (SVT) as Li et al. (MLMI 2019) use it to select and release update coordinates.

Privacy unit and neighbouring relation: **one site's update in one round**. Two updates are
neighbours if they are any two vectors of the same length; after per-coordinate clipping to
[−γ, γ] each query ``q_i = |clip(Δ_i)|`` lies in [0, γ] (sensitivity γ) and each released value
in [−γ, γ] (sensitivity 2γ). The guarantee bounds what the coordinator learns about a site's
update from what it shares; the patient-level guarantee is the site's DP-SGD ε (released values
are functions of the DP-SGD output, i.e. post-processing, so that ε still holds).

The mechanism is Lyu, Su & Li (VLDB 2017), Alg. 1 ("the SVT proposed in this paper", ε-DP for
any stream of queries, the threshold noised once and never resampled, halting after ``c``
positive answers), with numeric answers for the selected coordinates released by the Laplace
mechanism under a separate budget ε3 (sequential composition, ε = ε1 + ε2 + ε3). The split
between threshold and comparisons is Lyu et al.'s §4.2 optimum for non-monotonic queries,
ε1 : ε2 = 1 : (2c)^(2/3); ``value_share`` of ε goes to the values.

1. Clip: ``q_i = |clip(Δ_i, −γ, γ)|``.
2. Noisy threshold: ``T = τ + Lap(γ / ε1)``.
3. Noisy comparisons, in a random order (data-independent), over the coordinates not yet
   selected, for at most ``max_passes`` passes: select ``i`` if ``q_i + Lap(2cγ / ε2) ≥ T``;
   halt at ``c`` selections. Re-asking a query with fresh noise is one more query of the stream,
   which Alg. 1 allows at no cost; only the ``c`` positive answers are paid for.
4. Release ``clip(clip(Δ_i) + Lap(2cγ / ε3), −γ, γ)`` for each selected ``i`` (the outer clip
   is post-processing).

NVFlare's ``SVTPrivacy`` differs: it keeps every positive answer of a whole vectorised pass
(far more than ``c``) and then subsamples them, and noises each value with ``Lap(2γ/ε3)``, so
its ε3 is per value (c·ε3 in total); neither is counted in its reported ε.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SvtScales:
    """Laplace scales of one SVT round: threshold, comparisons, released values."""

    threshold: float
    query: float
    value: float


def split_epsilon(epsilon: float, *, c: int, value_share: float) -> tuple[float, float, float]:
    """(ε1 threshold, ε2 comparisons, ε3 values) summing to ``epsilon``.

    ε3 = value_share · ε; the rest is split 1 : (2c)^(2/3) (Lyu et al. 2017, §4.2).
    """
    if epsilon <= 0 or c < 1 or not 0 < value_share < 1:
        raise ValueError(f"need epsilon > 0, c >= 1, 0 < value_share < 1; got {epsilon}, {c}, {value_share}")
    eps3 = value_share * epsilon
    rest = epsilon - eps3
    eps1 = rest / (1.0 + (2.0 * c) ** (2.0 / 3.0))
    return eps1, rest - eps1, eps3


def noise_scales(*, gamma: float, c: int, eps1: float, eps2: float, eps3: float) -> SvtScales:
    """Laplace scales for query sensitivity γ, value sensitivity 2γ and ``c`` selections."""
    return SvtScales(threshold=gamma / eps1, query=2.0 * c * gamma / eps2, value=2.0 * c * gamma / eps3)


def svt_epsilon(scales: SvtScales, *, gamma: float, c: int) -> float:
    """ε of one SVT round from its parameters: γ/b1 + 2cγ/b2 + 2cγ/b3 (pure ε-DP)."""
    return gamma / scales.threshold + 2.0 * c * gamma / scales.query + 2.0 * c * gamma / scales.value


def sparse_vector(
    delta: np.ndarray,
    *,
    gamma: float,
    tau: float,
    c: int,
    scales: SvtScales,
    max_passes: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Select at most ``c`` coordinates of ``delta`` with SVT and release them noised.

    Returns
    -------
    (indices, values)
        Selected positions (ascending) and their released values, each in [−γ, γ].
    """
    clipped = np.clip(np.asarray(delta, dtype=np.float64), -gamma, gamma)  # step 1
    query = np.abs(clipped)
    threshold = tau + rng.laplace(scale=scales.threshold)  # step 2
    selected: list[np.ndarray] = []
    remaining = np.arange(delta.size)
    count = 0
    for _ in range(max_passes):  # step 3
        if count >= c or remaining.size == 0:
            break
        order = rng.permutation(remaining)
        above = query[order] + rng.laplace(scale=scales.query, size=order.size) >= threshold
        # Halting: positives after the c-th are never looked at (their noise is drawn but unused).
        hits = np.flatnonzero(above)[: c - count]
        selected.append(order[hits])
        count += hits.size
        remaining = np.setdiff1d(remaining, order[hits], assume_unique=True)
    indices = np.sort(np.concatenate(selected)) if selected else np.zeros(0, dtype=np.int64)
    noisy = clipped[indices] + rng.laplace(scale=scales.value, size=indices.size)  # step 4
    return indices, np.clip(noisy, -gamma, gamma)
