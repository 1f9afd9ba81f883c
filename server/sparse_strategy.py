"""FedAvg over sparse site updates (``strategy=partial_sharing`` / ``strategy=svt``), plain aggregation.

Each site replies with the shared coordinates of its update Δ_k (see :mod:`common.sparse_update`),
not with weights. The new global model is ``global + Σ_k w_k Δ_k / Σ_k w_k``, a coordinate a
site did not share counting as zero update for that site (Li et al. 2019): a coordinate only
one site of three shared moves by a third of that site's (example-weighted) value.

1. ``configure_train``: keep the global arrays this round starts from, then Flower's FedAvg.
2. ``aggregate_train``: decode every valid reply into a dense Δ_k (malformed replies stop the
   run with the site named), average with FedAvg's weights, add to the kept global arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.sparse_update import MalformedUpdate, average_sparse
from server.round_tracker import FederationStopped


class SparseFedAvg(FedAvg):
    """Flower's FedAvg whose sites send sparse updates (``fraction``: the share each may send)."""

    def __init__(self, *args: object, fraction: float, site_of: Callable[[MetricRecord], str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fraction = fraction
        self.site_of = site_of  # reply metrics -> site name, for error messages
        self._global: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Step 1: remember the round's starting point (sites send differences to it)."""
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Step 2: the weighted mean of the sites' dense updates, added to the global model."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self._global is None:
            return None, None
        start = {k: v.numpy() for k, v in self._global.items()}
        updates, sites = [], []
        for msg in valid:
            metrics = next(iter(msg.content.metric_records.values()))
            sent = next(iter(msg.content.array_records.values()))
            updates.append(({k: v.numpy() for k, v in sent.items()}, float(metrics[self.weighted_by_key])))
            sites.append(self.site_of(metrics))
        try:
            merged = average_sparse(start, updates, fraction=self.fraction)
        except MalformedUpdate as err:
            raise FederationStopped(f"site {sites[err.position]} sent a malformed sparse update: {err}") from err
        arrays = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in merged.items()})
        metrics = self.train_metrics_aggr_fn([msg.content for msg in valid], self.weighted_by_key)
        return arrays, metrics
