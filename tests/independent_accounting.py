"""Independent ε computations (Google's dp-accounting) to check privmed's accountants against."""

from __future__ import annotations

from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant

# Integer orders avoid dp-accounting's slow fractional-order series; ε differs by < 3%.
ORDERS = [*range(2, 64), 80, 128, 256]


def sample_level_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε of Poisson-subsampled Gaussian DP-SGD steps: ``history`` of (σ, q, steps)."""
    accountant = RdpAccountant(orders=ORDERS)
    for sigma, q, steps in history:
        accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), int(steps))
    return accountant.get_epsilon(delta)


def gaussian_epsilon(sigma: float, releases: int, delta: float) -> float:
    """ε of ``releases`` Gaussian mechanisms with noise multiplier σ (no amplification)."""
    accountant = RdpAccountant(orders=ORDERS)
    accountant.compose(dp_event.GaussianDpEvent(sigma), releases)
    return accountant.get_epsilon(delta)
