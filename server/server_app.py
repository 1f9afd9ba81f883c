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
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from common.federation_config import ConfigError, is_private, site_names, site_views, validate_config
from common.models import exchanged_state, frozen_digest, initial_model, load_exchanged
from common.run_config import config_from_run_config, tracking_uri
from server.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from server.mlflow_sink import MlflowSink
from server.report import print_summary, progress_plot
from server.resume import check_same_config, recorded_config, resumable_run
from server.round_tracker import FederationStopped, RoundTracker
from server.secure_aggregation import run_secure_rounds
from server.site_failures import RecordingGrid, SiteFailures
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
    metric: str = "auc"
    planned_rounds: int = 0
    # One line per site that failed or refused in the run: "<site> (rounds …): <reason>".
    failures: list[str] = field(default_factory=list)
    # The final global model's exchanged weights (what every site received last); None if no round ran.
    final_state: dict | None = None


def run_federation(grid: Grid, cfg: DictConfig, *, context: Context, sweep: str | None = None) -> FederationReport:
    """Run ``cfg.federation.num_rounds`` rounds on ``grid`` and record everything in MLflow.

    ``cfg.aggregation`` picks the round loop: Flower's Message-API strategy (plain) or its
    SecAgg+ workflow; both report to the same tracker, accountant and MLflow run. Every
    completed round is checkpointed in the run; ``cfg.resume`` continues a run from there.
    """
    validate_config(cfg)
    sites = site_names(cfg)
    resumed = resume_point(cfg)
    sink = MlflowSink(cfg, sweep=sweep)
    tracker = RoundTracker(sites=sites, metric=cfg.task.metric, sink=sink)
    failures = SiteFailures(sites)
    grid = RecordingGrid(grid, failures)
    # Every site rebuilds the same initial model (seeded, or model.init's weights); only its trained part travels.
    model = initial_model(cfg.model, cfg.seed, tracking_uri=sink.uri)
    digest = frozen_digest(model)
    global_state = exchanged_state(model) if resumed is None else resumed.arrays
    done = 0 if resumed is None else resumed.server_round
    if resumed is not None:
        tracker.resume(completed_rounds=done, rows=resumed.rows, eps_sample=resumed.eps_sample)
        failures.restore(resumed.failures)
        failures.round_offset = done
        log.info("resuming run %s after round %d of %d", sink.run_id, done, cfg.federation.num_rounds)
    # Sites calibrate σ once for the planned number of rounds; round-offset gives them the true round.
    round_config = {"num-rounds": cfg.federation.num_rounds, "frozen-sha256": digest, "round-offset": done}
    evaluate_config = ConfigRecord({"frozen-sha256": digest})
    report = FederationReport(
        run_id=sink.run_id, tracking_uri=sink.uri, metric=cfg.task.metric, planned_rounds=cfg.federation.num_rounds
    )
    status = RunStatus.to_string(RunStatus.FINISHED)
    timeout = cfg.simulation.round_timeout_s
    strategy = None

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        accountant = getattr(strategy, "accountant", None)
        save_checkpoint(
            sink.client,
            sink.run_id,
            Checkpoint(
                server_round=server_round,
                planned_rounds=cfg.federation.num_rounds,
                arrays=arrays.to_torch_state_dict(),
                client_accountant=accountant.state_dict() if accountant is not None else None,
                clipping_norm=getattr(strategy, "clipping_norm", None),
                rows=tracker.rows,
                eps_sample=tracker.eps_sample,
                failures=failures.to_json(),
            ),
        )

    tracker.on_round_end = checkpoint
    try:
        wait_for_sites(grid, len(sites), timeout_s=timeout)
        if cfg.aggregation.name == "secaggplus":
            initial = OrderedDict((k, v.numpy()) for k, v in global_state.items())
            strategy, tracker.client_epsilon = build_secure_strategy(
                cfg, num_sites=len(sites), tracker=tracker, initial=initial, round_config=round_config
            )
            continue_from(strategy, resumed)
            run_secure_rounds(
                grid,
                context,
                strategy=strategy,
                num_rounds=cfg.federation.num_rounds - done,
                evaluate_config=evaluate_config,
                eval_timeout=timeout,
            )
        else:
            # Only a federation without any DP site weights by patient counts (README "What leaves a hospital").
            by_examples = not any(is_private(view.privacy) for view in site_views(cfg).values())
            strategy, tracker.client_epsilon = build_strategy(
                cfg.strategy, num_sites=len(sites), tracker=tracker, weight_by_examples=by_examples
            )
            continue_from(strategy, resumed)
            strategy.start(
                grid=grid,
                initial_arrays=ArrayRecord(torch_state_dict=global_state),
                num_rounds=cfg.federation.num_rounds - done,
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
        report.rows, report.failures = tracker.rows, failures.lines()
        if tracker.latest_arrays is not None:
            report.final_state = tracker.latest_arrays.to_torch_state_dict()
        text = print_summary(
            tracker.rows, sites=sites, metric=cfg.task.metric, stop_reason=report.stop_reason, failures=report.failures
        )
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


def resume_point(cfg: DictConfig) -> Checkpoint | None:
    """The checkpoint ``cfg.resume`` continues from (None: a new run, or no round completed yet).

    Raises
    ------
    ConfigError
        If the run is unknown, finished, made with another config, or already has every round.
    """
    if not cfg.get("resume"):
        return None
    run_id = str(cfg.resume)
    client = MlflowClient(tracking_uri(cfg.mlflow))
    resumable_run(client, run_id)
    check_same_config(cfg, recorded_config(client, run_id), run_id)
    try:
        checkpoint = load_checkpoint(client, run_id)
    except CheckpointError as err:
        raise ConfigError(f"resume={run_id}: {err}") from err
    if checkpoint is not None and checkpoint.server_round >= cfg.federation.num_rounds:
        raise ConfigError(f"resume={run_id}: all {cfg.federation.num_rounds} rounds completed; nothing to resume")
    return checkpoint


def continue_from(strategy: object, checkpoint: Checkpoint | None) -> None:
    """Give a freshly built strategy the client-level accountant and clipping norm of the checkpoint."""
    if checkpoint is None:
        return
    accountant = getattr(strategy, "accountant", None)
    if accountant is not None and checkpoint.client_accountant is not None:
        accountant.load_state_dict(checkpoint.client_accountant)
    if checkpoint.clipping_norm is not None and hasattr(strategy, "clipping_norm"):
        strategy.clipping_norm = float(checkpoint.clipping_norm)


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
