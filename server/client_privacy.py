"""Client-level (site-level) DP accounting for DP-FedAvg, on Flower's RDP accountant."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.grid import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping


def client_accountant(*, num_sites: int, delta: float, max_epsilon: float) -> RdpAccountant:
    """Flower's RDP accountant for one Gaussian release per round over all sites.

    No amplification by sampling is claimed: every site takes part in every round
    (``fraction_train=1.0`` is enforced by config validation).
    """
    return RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=num_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=max_epsilon,
        )
    )


def round_release(accountant: RdpAccountant, noise_multiplier: float) -> GaussianPrivacyEvent:
    """One round's release: a Gaussian(z) mechanism over every site (no sampling amplification)."""
    n = accountant.config.population_size
    return GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=n, population_size=n)


def refuse_if_exhausted(accountant: RdpAccountant, event: GaussianPrivacyEvent) -> None:
    """Raise :class:`PrivacyBudgetExhausted` if ``event`` would push ε past the accountant's max."""
    if accountant.would_exceed(event):
        spent = accountant.get_privacy_spent()
        raise PrivacyBudgetExhausted(
            f"the next round would exceed client-level max_epsilon "
            f"(current epsilon: {spent.epsilon:.3f}, delta: {spent.delta:g})"
        )


class AccountedAdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, plus the accounting Flower only has for fixed clipping.

    Andrew et al. (2021) split a total noise multiplier z between the update noise and the
    clipped-count noise so that the pair is exactly as private as one Gaussian release with
    multiplier z. Each released round is therefore accounted as ``Gaussian(z)``.

    1. ``configure_train``: refuse the round if one more release would exceed max ε.
    2. ``aggregate_train``: aggregate (Flower), then compose one release if arrays came out.
    """

    def __init__(self, *args: object, total_noise_multiplier: float, accountant: RdpAccountant, **kwargs: object):
        super().__init__(*args, **kwargs)
        self.total_noise_multiplier = total_noise_multiplier
        self.accountant = accountant

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Step 1: stop before the release that would break the budget."""
        refuse_if_exhausted(self.accountant, round_release(self.accountant, self.total_noise_multiplier))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Step 2: account exactly the rounds whose noisy aggregate was released."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.accountant.compose(round_release(self.accountant, self.total_noise_multiplier))
        return arrays, metrics
