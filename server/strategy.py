"""Build the configured Flower strategy: FedAvg, optionally wrapped in DP-FedAvg."""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy
from omegaconf import DictConfig

from common.federation_config import adaptive_count_stddev
from collections import OrderedDict
from typing import Any

import numpy as np

from common.secagg_params import client_clip_norm, secagg_params
from common.sparse_update import SPARSE_STRATEGIES
from server.client_privacy import AccountedAdaptiveClipping, client_accountant
from server.round_tracker import RoundTracker
from server.secure_aggregation import SecureDpFedAvg
from server.sparse_strategy import SparseFedAvg

STRATEGIES = ("fedavg", "dp_fedavg", "dp_fedavg_adaptive", *SPARSE_STRATEGIES)


def build_strategy(
    strategy_cfg: DictConfig, *, num_sites: int, tracker: RoundTracker, weight_by_examples: bool = False
) -> tuple[Strategy, Callable[[], float] | None]:
    """Return the strategy and, when client-level DP is on, a function giving cumulative ε.

    ``weight_by_examples`` (only when no site trains with DP): plain FedAvg weights each site by
    its ``num-examples``. Private sites send no patient count, so every other case is one site,
    one vote (``uniform-weight``).

    Raises
    ------
    ValueError
        Naming an unknown strategy and the valid ones.
    """
    if strategy_cfg.name not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy_cfg.name!r}; valid: {', '.join(STRATEGIES)}")
    dp = strategy_cfg.client_dp
    # Sparse strategies: sites send the shared coordinates of their update, not weights.
    sparse = (
        {"fraction": float(strategy_cfg.fraction), "site_of": lambda m: tracker.sites[int(m["site-index"])]}
        if strategy_cfg.name in SPARSE_STRATEGIES
        else {}
    )
    base = (SparseFedAvg if sparse else FedAvg)(
        **sparse,
        fraction_train=strategy_cfg.fraction_train,
        fraction_evaluate=strategy_cfg.fraction_evaluate,
        min_train_nodes=num_sites if dp is not None else 2,
        min_evaluate_nodes=2,
        min_available_nodes=num_sites,
        # Client-level DP accounting assumes one site, one vote; and a private site's exact count of
        # training patients would leave it without DP (common/privacy/release_inventory.py).
        weighted_by_key="num-examples" if weight_by_examples and dp is None else "uniform-weight",
        train_metrics_aggr_fn=tracker.aggregate_train_metrics,
        evaluate_metrics_aggr_fn=tracker.aggregate_evaluate_metrics,
    )
    if dp is None:
        return base, None
    accountant = client_accountant(num_sites=num_sites, delta=dp.delta, max_epsilon=dp.max_epsilon)
    if strategy_cfg.name == "dp_fedavg":
        strategy: Strategy = DifferentialPrivacyServerSideFixedClipping(
            base, dp.noise_multiplier, dp.clipping_norm, num_sites, accountant=accountant
        )
    else:
        strategy = AccountedAdaptiveClipping(
            base,
            dp.noise_multiplier,
            num_sites,
            initial_clipping_norm=dp.initial_clipping_norm,
            target_clipped_quantile=dp.target_clipped_quantile,
            clip_norm_lr=dp.clip_norm_lr,
            clipped_count_stddev=adaptive_count_stddev(dp, num_sites),
            total_noise_multiplier=dp.noise_multiplier,
            accountant=accountant,
        )
    return strategy, lambda: accountant.get_privacy_spent().epsilon


def build_secure_strategy(
    cfg: DictConfig,
    *,
    num_sites: int,
    tracker: RoundTracker,
    initial: OrderedDict[str, np.ndarray],
    round_config: dict[str, Any],
) -> tuple[SecureDpFedAvg, Callable[[], float] | None]:
    """The SecAgg+ strategy for ``cfg.strategy`` (fedavg or dp_fedavg) and, with DP, cumulative ε.

    Raises
    ------
    ConfigError
        For strategies SecAgg+ cannot run (adaptive clipping) or invalid SecAgg+ parameters.
    """
    dp = cfg.strategy.client_dp
    params = secagg_params(cfg.aggregation, num_sites=num_sites, client_clip_norm=client_clip_norm(cfg.strategy))
    accountant = (
        client_accountant(num_sites=num_sites, delta=dp.delta, max_epsilon=dp.max_epsilon) if dp is not None else None
    )
    strategy = SecureDpFedAvg(
        initial=initial,
        round_config=round_config,
        params=params,
        num_sites=num_sites,
        tracker=tracker,
        client_dp=dp,
        accountant=accountant,
    )
    return strategy, (lambda: accountant.get_privacy_spent().epsilon) if accountant is not None else None
