"""Flower ServerApp of the coordinator: reads config, builds the strategy, runs it, tracks it."""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.exception import PrivacyBudgetExhausted
from mlflow.entities import RunStatus
from omegaconf import DictConfig

from common.federation_config import site_names, validate_config
from common.models import exchanged_state, frozen_digest, initial_model, load_exchanged
from common.run_config import config_from_run_config
from server.mlflow_sink import MlflowSink
from server.report import print_summary, progress_plot
from server.round_tracker import FederationStopped, RoundTracker
from server.secure_aggregation import run_secure_rounds
from server.site_wait import wait_for_sites
from server.strategy import build_secure_strategy, build_strategy

log = logging.getLogger(__name__)


@dataclass
class FederationReport:
    """What a finished federation leaves for its caller."""

    rows: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    # The final global model's exchanged weights (what every site received last); None if no round ran.
    final_state: dict | None = None


def run_federation(grid: Grid, cfg: DictConfig, *, context: Context, sweep: str | None = None) -> FederationReport:
    """Run ``cfg.federation.num_rounds`` rounds on ``grid`` and record everything in MLflow.

    ``cfg.aggregation`` picks the round loop: Flower's Message-API strategy (plain) or its
    SecAgg+ workflow; both report to the same tracker, accountant and MLflow run.
    """
    validate_config(cfg)
    sites = site_names(cfg)
    sink = MlflowSink(cfg, sweep=sweep)
    tracker = RoundTracker(sites=sites, metric=cfg.task.metric, sink=sink)
    # Every site rebuilds the same initial model (seeded, or model.init's weights); only its trained part travels.
    model = initial_model(cfg.model, cfg.seed, tracking_uri=sink.uri)
    digest = frozen_digest(model)
    # Sites calibrate σ once for the planned number of rounds.
    round_config = {"num-rounds": cfg.federation.num_rounds, "frozen-sha256": digest}
    evaluate_config = ConfigRecord({"frozen-sha256": digest})
    report = FederationReport(run_id=sink.run_id, tracking_uri=sink.uri)
    status = RunStatus.to_string(RunStatus.FINISHED)
    timeout = cfg.simulation.round_timeout_s
    try:
        wait_for_sites(grid, len(sites), timeout_s=timeout)
        if cfg.aggregation.name == "secaggplus":
            initial = OrderedDict((k, v.numpy()) for k, v in exchanged_state(model).items())
            secure, tracker.client_epsilon = build_secure_strategy(
                cfg, num_sites=len(sites), tracker=tracker, initial=initial, round_config=round_config
            )
            run_secure_rounds(
                grid,
                context,
                strategy=secure,
                num_rounds=cfg.federation.num_rounds,
                evaluate_config=evaluate_config,
                eval_timeout=timeout,
            )
        else:
            strategy, tracker.client_epsilon = build_strategy(cfg.strategy, num_sites=len(sites), tracker=tracker)
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(torch_state_dict=exchanged_state(model)),
                num_rounds=cfg.federation.num_rounds,
                timeout=timeout,
                train_config=ConfigRecord(round_config),
                evaluate_config=evaluate_config,
                evaluate_fn=tracker.end_round,
            )
    except (FederationStopped, PrivacyBudgetExhausted) as err:
        report.stop_reason = str(err)
        log.warning("federation stopped early: %s", err)
    except BaseException:
        status = RunStatus.to_string(RunStatus.FAILED)
        raise
    finally:
        report.rows = tracker.rows
        if tracker.latest_arrays is not None:
            report.final_state = tracker.latest_arrays.to_torch_state_dict()
        text = print_summary(tracker.rows, sites=sites, metric=cfg.task.metric, stop_reason=report.stop_reason)
        with tempfile.TemporaryDirectory() as tmp:
            artifacts = [Path(tmp) / "summary.txt"]
            artifacts[0].write_text(text)
            if tracker.rows:
                artifacts.append(progress_plot(tracker.rows, metric=cfg.task.metric, path=Path(tmp) / "progress.png"))
            final_state = None
            if tracker.latest_arrays is not None and cfg.mlflow.log_model:
                load_exchanged(model, tracker.latest_arrays.to_torch_state_dict())
                final_state = model.state_dict()  # frozen + trained: a complete model
            sink.finish(
                model_state=final_state,
                model_cfg=cfg.model,
                artifacts=artifacts,
                status=status,
                stop_reason=report.stop_reason,
            )
    return report


def build_server_app(
    load_config: Callable[[Context], DictConfig],
    *,
    sweep: str | None = None,
    on_finish: Callable[[FederationReport], None] | None = None,
) -> ServerApp:
    """A ServerApp whose main composes the config with ``load_config(context)``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        report = run_federation(grid, load_config(context), context=context, sweep=sweep)
        if on_finish is not None:
            on_finish(report)

    return app


# Entry point for `flwr run`: config composed from the run config's Hydra overrides.
app = build_server_app(config_from_run_config)
