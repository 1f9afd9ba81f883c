"""SecAgg+ protocol parameters: defaults derived from the federation, checked before anything runs.

The cryptography is Flower's (``SecAggPlusWorkflow`` / ``secaggplus_mod``); this file only
chooses and validates its knobs so that a bad choice fails up front with a message instead of
halting a round, overflowing the masked sums or silently saturating updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig

from common.federation_config import ConfigError

# Flower's own default when no client-level clipping norm bounds the update.
DEFAULT_CLIPPING_RANGE = 8.0
# Up to this many sites, every site shares with every other one (plain SecAgg security).
FULL_SHARING_SITES = 11


@dataclass(frozen=True)
class SecAggParams:
    """Resolved SecAgg+ parameters for one federation."""

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float
    quantization_range: int
    modulus_range: int
    timeout_s: float

    @property
    def resolution(self) -> float:
        """Quantization step of one coordinate of one site's update."""
        return 2.0 * self.clipping_range / self.quantization_range


def default_num_shares(num_sites: int) -> int:
    """Every site up to 11 sites, else the odd number nearest 3·log2(sites) (SecAgg+'s O(log n))."""
    if num_sites <= FULL_SHARING_SITES:
        return num_sites
    shares = math.ceil(3 * math.log2(num_sites))
    return min(num_sites, shares + (1 - shares % 2))


def secagg_params(aggregation: DictConfig, *, num_sites: int, client_clip_norm: float | None) -> SecAggParams:
    """Resolve and validate ``cfg.aggregation`` for ``num_sites`` sites.

    Parameters
    ----------
    aggregation : DictConfig
        The ``aggregation`` group with ``name: secaggplus``.
    num_sites : int
        Sites in the federation (all of them take part in every round).
    client_clip_norm : float or None
        The client-level clipping norm C when DP-FedAvg clips updates at the sites.

    Raises
    ------
    ConfigError
        Naming the key, the value and what is allowed.
    """
    shares = aggregation.num_shares if aggregation.num_shares is not None else default_num_shares(num_sites)
    if not 3 <= shares <= num_sites:
        raise ConfigError(
            f"aggregation.num_shares={shares} must be in [3, sites={num_sites}]: SecAgg+ needs at least "
            "3 sites sharing secrets, and a site can share only with the sites that exist (with 2 sites "
            "each could subtract its own update from the sum: use aggregation=plain)"
        )
    threshold = aggregation.reconstruction_threshold
    if threshold is None:
        threshold = math.ceil(2 * shares / 3)
    if threshold >= shares:
        raise ConfigError(
            f"aggregation.reconstruction_threshold={threshold} must be less than num_shares={shares}: "
            "otherwise a single dropped site would make the round's sum impossible to unmask"
        )
    if threshold <= shares / 2:
        raise ConfigError(
            f"aggregation.reconstruction_threshold={threshold} must be more than half of "
            f"num_shares={shares}: with at most half, the coordinator could collect both the mask and "
            "the key shares of one site and unmask its individual update"
        )
    if client_clip_norm is not None:
        clipping_range = float(aggregation.clipping_range or client_clip_norm)
        if clipping_range < client_clip_norm:
            raise ConfigError(
                f"aggregation.clipping_range={clipping_range:g} is below the client-level clipping norm "
                f"{client_clip_norm:g}: a clipped update can have a coordinate up to {client_clip_norm:g}, "
                "which SecAgg+ quantization would saturate (set clipping_range >= clipping norm or null)"
            )
    else:
        clipping_range = float(aggregation.clipping_range or DEFAULT_CLIPPING_RANGE)
    if clipping_range <= 0:
        raise ConfigError(f"aggregation.clipping_range must be > 0, got {clipping_range:g}")
    q_range, mod_range = int(aggregation.quantization_range), int(aggregation.modulus_range)
    if q_range < 2:
        raise ConfigError(f"aggregation.quantization_range must be an integer >= 2, got {q_range}")
    if mod_range & (mod_range - 1) or mod_range <= 0:
        raise ConfigError(f"aggregation.modulus_range must be a power of 2, got {mod_range}")
    if num_sites * q_range >= mod_range:
        raise ConfigError(
            f"aggregation.modulus_range={mod_range} must exceed sites × quantization_range = "
            f"{num_sites} × {q_range}: the masked sum would wrap around and decode to garbage"
        )
    if aggregation.timeout_s is None or aggregation.timeout_s <= 0:
        raise ConfigError(
            f"aggregation.timeout_s must be > 0 (a bounded wait per SecAgg+ stage), got {aggregation.timeout_s}"
        )
    return SecAggParams(
        num_shares=int(shares),
        reconstruction_threshold=int(threshold),
        clipping_range=clipping_range,
        quantization_range=q_range,
        modulus_range=mod_range,
        timeout_s=float(aggregation.timeout_s),
    )


def client_clip_norm(strategy: DictConfig) -> float | None:
    """The client-level clipping norm sites apply themselves under SecAgg+ (None without DP-FedAvg).

    Raises
    ------
    ConfigError
        For adaptive clipping: its clipped-count statistic needs each site's norm bit, which
        SecAgg+ would have to aggregate too; only fixed clipping is supported with SecAgg+.
    """
    dp = strategy.client_dp
    if dp is None:
        return None
    if dp.clipping != "fixed":
        raise ConfigError(
            f"strategy={strategy.name} (adaptive clipping) cannot run with aggregation=secaggplus: use "
            "strategy=dp_fedavg (fixed clipping at the sites) or aggregation=plain"
        )
    return float(dp.clipping_norm)
