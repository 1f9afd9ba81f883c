"""Calibrate the DP-SGD noise multiplier once for a site's whole planned participation."""

from __future__ import annotations

from functools import lru_cache

from opacus.accountants.utils import get_noise_multiplier

from common.privacy.mechanisms import new_accountant


@lru_cache(maxsize=64)  # a binary search of ~15 ε evaluations; sites of equal size share it
def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, mechanism: str = "rdp"
) -> float:
    """Smallest noise multiplier whose ε after ``steps`` Poisson-sampled steps is ≤ target.

    σ is calibrated once for all planned rounds: calibrating per round (as
    ``make_private_with_epsilon`` each round would) reports one round's ε and hides the
    total spend.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    new_accountant(mechanism)  # validates the name with a clear message
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=mechanism,
            epsilon_tolerance=0.01,
        )
    )
