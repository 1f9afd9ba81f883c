"""Collect each round's results from Flower replies and hand them to a sink (MLflow).

Hooked into the stock Flower strategy through its own callbacks (metric aggregation
functions and the per-round ``evaluate_fn``), so the round loop stays Flower's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict

log = logging.getLogger(__name__)


class FederationStopped(RuntimeError):
    """The federation ended early for a stated reason (budgets spent, bad update)."""


class RoundSink(Protocol):
    """Where round results go (MLflow in production, a list in tests)."""

    def log_site_params(self, params: dict[str, float]) -> None: ...

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None: ...


@dataclass
class RoundTracker:
    """Per-round bookkeeping of a federation.

    Parameters
    ----------
    sites : list of str
        Site names in partition order (a reply's ``site-index`` indexes this list).
    metric : str
        The task metric, ``auc`` or ``dice``.
    sink : RoundSink
        Receives per-site params once and every round's metrics.
    client_epsilon : callable or None
        Returns cumulative client-level ε when client-level DP is on.
    round_offset : int
        Rounds completed before this coordinator started (resume): Flower counts from 1 again.
    on_round_end : callable or None
        Called with (round, global arrays) once a round is logged: the coordinator's checkpoint.
    """

    sites: list[str]
    metric: str
    sink: RoundSink
    client_epsilon: Callable[[], float] | None = None
    round_offset: int = 0
    on_round_end: Callable[[int, ArrayRecord], None] | None = None
    rows: list[dict[str, float]] = field(default_factory=list)
    latest_arrays: ArrayRecord | None = None
    _train: dict[str, dict[str, float]] = field(default_factory=dict)
    _eval: dict[str, float] = field(default_factory=dict)
    _eps_sample: dict[str, float] = field(default_factory=dict)
    _eps_svt: dict[str, float] = field(default_factory=dict)
    _bytes: dict[str, float] = field(default_factory=dict)
    _site_params_logged: set[str] = field(default_factory=set)

    @property
    def eps_sample(self) -> dict[str, float]:
        """Each site's latest reported sample-level ε."""
        return dict(self._eps_sample)

    def resume(self, *, completed_rounds: int, rows: list[dict[str, float]], eps_sample: dict[str, float]) -> None:
        """Continue a federation after ``completed_rounds``: its earlier rows and each site's latest ε."""
        self.round_offset = completed_rounds
        self.rows = [dict(r) for r in rows]
        self._eps_sample = dict(eps_sample)

    # -- Flower callbacks --------------------------------------------------------------
    def aggregate_train_metrics(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Flower callback (plain aggregation): reject non-finite updates, then record the round."""
        self._bytes = {}
        for record in records:
            site = self.sites[int(_metrics_of(record)["site-index"])]
            # What the site's update cost on the wire (serialized arrays, as received).
            self._bytes[site] = float(sum(len(a.data) for r in record.array_records.values() for a in r.values()))
            for array_record in record.array_records.values():
                for key, array in array_record.items():
                    values = array.numpy()
                    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                        raise FederationStopped(
                            f"site {site} sent a non-finite update ({key} has NaN/inf); "
                            "stopping with the last good global model"
                        )
        return self.record_train([_metrics_of(r) for r in records])

    def record_train(self, replies: list[Mapping[str, float]]) -> MetricRecord:
        """Keep each aggregated site's training metrics and privacy status (both aggregation modes)."""
        self._train = {}
        for metrics in replies:
            site = self.sites[int(metrics["site-index"])]
            self._train[site] = {k: float(v) for k, v in metrics.items()}
            if "eps-sample" in metrics:  # absent from non-private (privacy=none) replies
                self._eps_sample[site] = float(metrics["eps-sample"])
            if "eps-svt" in metrics:  # strategy=svt: cumulative SVT ε of the site's released updates
                self._eps_svt[site] = float(metrics["eps-svt"])
        params = {}
        for site, m in self._train.items():
            if site not in self._site_params_logged and "noise-multiplier" in m:
                params[f"site.{site}.noise_multiplier"] = m["noise-multiplier"]
                params[f"site.{site}.sample_rate"] = m["sample-rate"]
                self._site_params_logged.add(site)
        if params:
            self.sink.log_site_params(params)
        # No training loss: sites keep it (computed from training patients without DP).
        return MetricRecord({"sites_trained": float(len(self._train))})

    def aggregate_evaluate_metrics(self, records: list[RecordDict], weighting_key: str) -> MetricRecord:
        """Test-example-weighted averages of every evaluation metric (NaN from one-class sites skipped).

        Evaluation replies are computed on each site's held-out test patients only (not DP):
        ``num-examples`` there is the size of the test set.
        """
        per_site = [_metrics_of(r) for r in records]
        keys = sorted({k for m in per_site for k in m} - {"num-examples", "site-index", "uniform-weight"})
        self._eval = {k: _weighted([(m[k], m["num-examples"]) for m in per_site if k in m]) for k in keys}
        for m in per_site:
            site = self.sites[int(m["site-index"])]
            if self.metric in m:
                self._eval[f"site.{site}.{self.metric}"] = float(m[self.metric])
        return MetricRecord({k: v for k, v in self._eval.items() if not math.isnan(v)})

    def end_round(self, server_round: int, arrays: ArrayRecord) -> None:
        """Flower's per-round ``evaluate_fn``: log the round, keep the model, stop if idle."""
        self.latest_arrays = arrays
        if server_round == 0:  # called once before training starts
            return None
        server_round += self.round_offset
        row: dict[str, float] = {"round": float(server_round), **self._eval}
        # Every site whose update reached the aggregate (after dropouts and refusals).
        row.update(
            sites_trained=float(len(self._train)),
            sites_aggregated=float(len(self._train)),
        )
        for site, m in self._train.items():
            if "eps-sample" in m:
                row[f"site.{site}.eps_sample"] = float(m["eps-sample"])
            row[f"site.{site}.steps"] = float(m["steps"])
            if "eps-svt" in m:
                row[f"site.{site}.eps_svt"] = float(m["eps-svt"])
        if self._eps_svt:
            row["eps_svt"] = max(self._eps_svt.values())
        if self._bytes:
            row["bytes_per_site"] = sum(self._bytes.values()) / len(self._bytes)
        if self._eps_sample:
            row["eps_sample_max"] = max(self._eps_sample.values())
        if self.client_epsilon is not None:
            row["eps_client"] = float(self.client_epsilon())
        self.rows.append(row)
        self.sink.log_round(server_round, {k: v for k, v in row.items() if k != "round" and not math.isnan(v)})
        trained = len(self._train)
        self._train, self._eval, self._bytes = {}, {}, {}
        if self.on_round_end is not None:
            self.on_round_end(server_round, arrays)
        if trained == 0:
            raise FederationStopped(
                f"no site trained in round {server_round} (all refused or failed; see the site errors above)"
            )
        return None


def _metrics_of(record: RecordDict) -> MetricRecord:
    records = list(record.metric_records.values())
    if len(records) != 1:
        raise ValueError(f"expected one MetricRecord per reply, got {len(records)}")
    return records[0]


def _weighted(pairs: list[tuple[float, float]]) -> float:
    """Weighted mean of (value, weight) pairs, ignoring NaN values; NaN if none is left."""
    finite = [(float(v), float(w)) for v, w in pairs if not math.isnan(float(v))]
    total = sum(w for _, w in finite)
    return sum(v * w for v, w in finite) / total if total > 0 else float("nan")
