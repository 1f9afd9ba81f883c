"""MLflow tracking of one federation run (a child run under a parent for Hydra multiruns).

Uses ``MlflowClient`` with explicit run ids: in simulation the ServerApp runs in its own
thread, where MLflow's fluent "active run" would not be visible.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from common.models.factory import build_model
from common.models.logged import describe_model, log_trained_model
from common.run_config import tracking_uri

log = logging.getLogger(__name__)

# MLflow's log_batch accepts at most this many params / metrics per call.
_BATCH = 100
# MLflow's param value size limit.
_MAX_PARAM_CHARS = 6000
SWEEP_TAG = "privmed.sweep"
# "dp" for sample-level DP-SGD runs, "none" for the non-private reference (privacy=none).
PRIVACY_TAG = "privmed.privacy"


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into dotted keys with string values."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_MAX_PARAM_CHARS]
    return flat


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of MLflow experiment ``name``, created when missing."""
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def sweep_parent_run(client: MlflowClient, experiment_id: str, sweep: str, *, create: bool = True) -> str | None:
    """The parent run of sweep ``sweep`` (tag ``privmed.sweep``), created when missing and ``create``.

    A multirun creates it before its jobs start (``server.sweep_callback``), so jobs running in
    parallel all find the same parent instead of each creating one.
    """
    query = f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`privmed.role` = 'parent'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    if not create:
        return None
    parent = client.create_run(experiment_id, run_name=f"sweep {sweep}", tags={SWEEP_TAG: sweep, "privmed.role": "parent"})
    client.set_terminated(parent.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    return parent.info.run_id


class MlflowSink:
    """One MLflow run: config as params and YAML, round metrics, final model and plots.

    Parameters
    ----------
    cfg : DictConfig
        The full resolved config; ``cfg.mlflow`` says where and how to log.
    sweep : str or None
        A multirun's sweep id: runs of one sweep become children of one parent run.
    """

    def __init__(self, cfg: DictConfig, *, sweep: str | None = None) -> None:
        self.cfg = cfg
        self.uri = tracking_uri(cfg.mlflow)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_id = experiment_id(self.client, cfg.mlflow.experiment_name)
        if cfg.get("resume"):
            # A resumed federation continues its own run: params were logged when it started.
            self.run_id = str(cfg.resume)
            self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            log.info("MLflow run %s at %s (resumed)", self.run_id, self.uri)
            return
        tags = {PRIVACY_TAG: "dp" if cfg.privacy.get("enabled", True) else "none"}
        if sweep:
            tags["mlflow.parentRunId"] = sweep_parent_run(self.client, self.experiment_id, sweep)
            tags[SWEEP_TAG] = sweep
        run = self.client.create_run(self.experiment_id, run_name=cfg.mlflow.run_name, tags=tags)
        self.run_id = run.info.run_id
        container = OmegaConf.to_container(cfg, resolve=True)
        self._log_params(flatten(container))
        self.client.log_text(self.run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/resolved_config.yaml")
        log.info("MLflow run %s at %s", self.run_id, self.uri)

    def _log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _BATCH])

    def log_site_params(self, params: dict[str, float]) -> None:
        """Per-site privacy parameters, known once the site calibrated σ."""
        self._log_params({k: f"{v:.6g}" for k, v in params.items()})

    def log_round(self, server_round: int, metrics: dict[str, float]) -> None:
        """Metrics of one round, with ``step`` = server round."""
        now_ms = int(time.time() * 1000)  # wall-clock time: MLflow's time axis and round durations
        items = [Metric(k, float(v), now_ms, server_round) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _BATCH])

    def finish(
        self,
        *,
        model_state: dict[str, torch.Tensor] | None,
        model_cfg: DictConfig,
        artifacts: list[Path],
        status: str,
        stop_reason: str | None,
    ) -> None:
        """Log the final global model (an MLflow Model), plots and summary, then close the run with ``status``.

        The run is closed even when logging the model fails: as FAILED, and the error propagates
        unless the run had already failed.
        """
        if stop_reason:
            self.client.set_tag(self.run_id, "privmed.stop_reason", stop_reason)
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path), "report")
        try:
            if model_state is not None:
                module = build_model(model_cfg)
                module.load_state_dict(model_state, strict=True)
                described = describe_model(self.cfg, metrics=self.client.get_run(self.run_id).data.metrics)
                log_trained_model(
                    module,
                    run_id=self.run_id,
                    described=described,
                    registered_model_name=self.cfg.mlflow.get("registered_model_name"),
                )
        except Exception:
            if status == RunStatus.to_string(RunStatus.FAILED):
                # The federation already failed: keep its error, not this one.
                log.exception("the failed run's last model could not be logged")
            else:
                status = RunStatus.to_string(RunStatus.FAILED)
                raise
        finally:
            self.client.set_terminated(self.run_id, status)
