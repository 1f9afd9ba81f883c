"""SecAgg+ rounds: Flower's ``SecAggPlusWorkflow`` with client-level DP added to the unmasked sum.

Flower 1.41 offers SecAgg+ only on its legacy workflow path (``LegacyContext``,
``DefaultWorkflow``, a legacy ``Strategy``). :class:`SecureDpFedAvg` is that legacy strategy;
it reports to the same :class:`RoundTracker` and client-level accountant as the plain path.

Sites send their update Δ (clipped by themselves to C under DP-FedAvg), masked; Flower's
workflow unmasks only the mean over the sites that survived the round. Then:

1. ``configure_fit``: stop before a release that would break the client-level budget; wait, bounded,
   for every site; send the round config (clipping norm, quantization range, frozen digest).
2. (Flower) setup → share keys → collect masked Δ → unmask: mean Δ over ``m`` live sites.
3. ``aggregate_fit``: reject a non-finite mean; add Gaussian noise of std z·C on the sum
   (z·C/m on the mean, ``m`` counted after dropouts); account one Gaussian(z) release;
   global ← global + mean Δ.
4. :func:`evaluate_stage`: every site evaluates the new global model (Message API, bounded);
   the tracker closes the round.
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ClientManager, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.serverapp import GaussianPrivacyEvent, Grid, RdpAccountant
from omegaconf import DictConfig

from common.secagg_params import SecAggParams
from server.client_privacy import refuse_if_exhausted, round_release
from server.round_tracker import FederationStopped, RoundTracker

log = logging.getLogger(__name__)


class SecureDpFedAvg(Strategy):
    """Legacy Flower strategy for SecAgg+ rounds, optionally with client-level DP (fixed clipping).

    Parameters
    ----------
    initial : OrderedDict of str to ndarray
        The initial global (exchanged) weights; their order is the order they travel in as
        legacy ``Parameters``.
    round_config : dict
        Sent to every site with each round (``num-rounds``, ``frozen-sha256``).
    params : SecAggParams
        The resolved SecAgg+ parameters.
    num_sites : int
        Every site takes part in every round.
    tracker : RoundTracker
        Receives each round's site metrics.
    client_dp : DictConfig or None
        ``strategy.client_dp`` (fixed clipping) or None for no client-level noise.
    accountant : RdpAccountant or None
        The client-level accountant (required with ``client_dp``).
    """

    def __init__(
        self,
        *,
        initial: OrderedDict[str, np.ndarray],
        round_config: dict[str, Any],
        params: SecAggParams,
        num_sites: int,
        tracker: RoundTracker,
        client_dp: DictConfig | None,
        accountant: RdpAccountant | None,
    ) -> None:
        super().__init__()
        if (client_dp is None) != (accountant is None):
            raise ValueError("client-level DP needs an accountant, and an accountant needs client-level DP")
        self.global_weights = OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in initial.items())
        self.round_config = dict(round_config)
        self.params = params
        self.num_sites = num_sites
        self.tracker = tracker
        self.client_dp = client_dp
        self.accountant = accountant
        self.aggregated_rounds: set[int] = set()
        # Noise for privacy must be unpredictable: seeded from the OS, never from the config seed.
        self._rng = np.random.default_rng(secrets.randbits(128))

    # -- what the tracker and the evaluation stage read ----------------------------------
    def global_arrays(self) -> ArrayRecord:
        """The current global exchanged weights as a named ArrayRecord."""
        return ArrayRecord(torch_state_dict=OrderedDict((k, torch.from_numpy(v.copy())) for k, v in self.global_weights.items()))

    def _release(self) -> GaussianPrivacyEvent:
        return round_release(self.accountant, float(self.client_dp.noise_multiplier))

    # -- legacy Strategy interface ---------------------------------------------------------
    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return ndarrays_to_parameters(list(self.global_weights.values()))

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Step 1: budget check, bounded wait for all sites, the round's instructions."""
        if self.accountant is not None:
            refuse_if_exhausted(self.accountant, self._release())
        if not client_manager.wait_for(self.num_sites, timeout=int(self.params.timeout_s)):
            raise FederationStopped(
                f"round {server_round}: only {client_manager.num_available()} of {self.num_sites} sites connected "
                f"within aggregation.timeout_s={self.params.timeout_s:g}s"
            )
        config = {
            **self.round_config,
            "server-round": server_round,
            "clipping-range": self.params.clipping_range,
            "update-clip-norm": float(self.client_dp.clipping_norm) if self.client_dp is not None else 0.0,
        }
        # The workflow masks parameters_to_ndarrays(parameters): ours are the global weights.
        weights = ndarrays_to_parameters(list(self.global_weights.values()))
        return [(proxy, FitIns(weights, dict(config))) for proxy in client_manager.all().values()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Any]]:
        """Step 3: noise on the unmasked mean, one accounted release, new global weights."""
        for failure in failures:
            log.warning("round %d: a site dropped out of SecAgg+: %s", server_round, failure)
        if not results:
            return None, {}
        # Flower's workflow hands every result the same unmasked mean of the live sites' Δ.
        mean_update = parameters_to_ndarrays(results[0][1].parameters)
        m = len(results)
        for key, value in zip(self.global_weights, mean_update, strict=True):
            if not np.isfinite(value).all():
                raise FederationStopped(
                    f"round {server_round}: the securely aggregated update of {key} is not finite; "
                    "stopping with the last good global model"
                )
        if self.client_dp is not None:
            # Std z·C on the sum of clipped updates, i.e. z·C/m on the mean of the m sites aggregated.
            std = float(self.client_dp.noise_multiplier) * float(self.client_dp.clipping_norm) / m
            mean_update = [u + self._rng.normal(0.0, std, size=u.shape) for u in mean_update]
            self.accountant.compose(self._release())
        self.global_weights = OrderedDict(
            (k, (w.astype(np.float64) + u).astype(np.float32))
            for (k, w), u in zip(self.global_weights.items(), mean_update, strict=True)
        )
        self.tracker.record_train([fit_res.metrics for _, fit_res in results])
        self.aggregated_rounds.add(server_round)
        log.info("round %d: SecAgg+ aggregated %d of %d sites", server_round, m, self.num_sites)
        return ndarrays_to_parameters(list(self.global_weights.values())), {"sites_aggregated": m}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []  # evaluation runs in evaluate_stage, on the Message API, with a bounded wait

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Any]]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Any]] | None:
        return None


def evaluate_stage(strategy: SecureDpFedAvg, *, evaluate_config: ConfigRecord, timeout: float):
    """Step 4 as a legacy workflow: federated evaluation of the new global model, then close the round."""

    def stage(grid: Grid, context: LegacyContext) -> None:
        server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        if server_round not in strategy.aggregated_rounds:
            raise FederationStopped(
                f"round {server_round}: SecAgg+ could not unmask the sum (fewer than "
                f"reconstruction_threshold={strategy.params.reconstruction_threshold} live neighbours for "
                "some site, or every site refused); see the site errors above"
            )
        arrays = strategy.global_arrays()
        messages = [
            Message(
                content=RecordDict({"arrays": arrays, "config": evaluate_config}),
                dst_node_id=node,
                message_type=MessageType.EVALUATE,
                group_id=str(server_round),
            )
            for node in grid.get_node_ids()
        ]
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        strategy.tracker.aggregate_evaluate_metrics([r.content for r in replies if r.has_content()], "num-examples")
        strategy.tracker.end_round(server_round, arrays)

    return stage


def run_secure_rounds(
    grid: Grid,
    context: Context,
    *,
    strategy: SecureDpFedAvg,
    num_rounds: int,
    evaluate_config: ConfigRecord,
    eval_timeout: float,
) -> None:
    """Run ``num_rounds`` SecAgg+ rounds on ``grid`` (raises FederationStopped / PrivacyBudgetExhausted)."""
    p = strategy.params
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=num_rounds, round_timeout=p.timeout_s),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=p.num_shares,
            reconstruction_threshold=p.reconstruction_threshold,
            # Every site sends weight 1 (see client/secure_messages.py): max_weight 1 keeps full precision.
            max_weight=1.0,
            clipping_range=p.clipping_range,
            quantization_range=p.quantization_range,
            modulus_range=p.modulus_range,
            timeout=p.timeout_s,
        ),
        evaluate_workflow=evaluate_stage(strategy, evaluate_config=evaluate_config, timeout=eval_timeout),
    )
    strategy.tracker.end_round(0, strategy.global_arrays())  # keeps the initial model as the last good one
    workflow(grid, legacy)
