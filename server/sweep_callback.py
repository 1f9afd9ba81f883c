"""Hydra callback of ``privmed-simulate -m``: one MLflow parent per sweep, its report at the end.

Registered in ``conf/config.yaml`` (``hydra.callbacks.sweep_report``). Before the first job it
creates the sweep's parent run (tag ``privmed.sweep`` = the sweep dir), so jobs running in
parallel (joblib or Ray launcher) all find the same parent; after the last job it logs
``report/privacy_utility.{png,csv,html}`` to that parent (:mod:`server.sweep_report`).

A tuning sweep (``hparams_search=...``) is refused before any job when a site reads real
patient files, unless ``tuning.allow_real_data`` is true: the choice of hyperparameters is
itself computed from the training patients and is not covered by any site's ε (README "Sweeps").
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("privmed")


class TuningOnRealData(Exception):
    """A hyperparameter search was asked to tune on real patient files without opting in."""


class SweepReportCallback(Callback):
    """Create the sweep's parent run at the start of a multirun and log its report at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse tuning on real files unasked; create the parent run before any job starts."""
        _check_tuning_data(config)
        from server.mlflow_sink import sweep_parent_run

        client, experiment_id, sweep = _where(config)
        parent = sweep_parent_run(client, experiment_id, sweep)
        print(f"MLflow parent run {parent} for sweep {sweep} in {client.tracking_uri}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Log the privacy-utility report to the sweep's parent run (a warning if it cannot be made)."""
        from server.mlflow_sink import sweep_parent_run
        from server.sweep_report import ReportError, log_report

        client, experiment_id, sweep = _where(config)
        parent = sweep_parent_run(client, experiment_id, sweep, create=False)
        if parent is None:
            log.warning("sweep %s: no MLflow parent run found, so no sweep report", sweep)
            return
        try:
            report = log_report(client, parent)
        except ReportError as err:
            # The jobs' own runs are in MLflow whatever happens here; do not fail the sweep.
            log.warning("sweep report not written: %s", err)
            return
        print(f"sweep report ({len(report.rows)} runs): " + ", ".join(f"runs:/{parent}/{f}" for f in report.files))


def _where(config: DictConfig) -> tuple[Any, str, str]:
    """MLflow client, experiment id and sweep id (the sweep dir, as every job tags it)."""
    from mlflow.tracking import MlflowClient

    from common.run_config import tracking_uri
    from server.mlflow_sink import experiment_id

    client = MlflowClient(tracking_uri(config.mlflow))
    return client, experiment_id(client, config.mlflow.experiment_name), str(config.hydra.sweep.dir)


def _check_tuning_data(config: DictConfig) -> None:
    tuning = config.get("tuning")
    if not tuning or tuning.get("allow_real_data", False):
        return
    from omegaconf import OmegaConf

    from common.federation_config import expand_sites, reads_real_files

    real = []
    for name, site in expand_sites(config.federation).items():
        # Only format and synthesize are read: the data roots name job dirs that do not exist yet.
        own = site.get("data") or {}
        data = {key: own.get(key, config.task.data.get(key)) for key in ("format", "synthesize")}
        if reads_real_files(OmegaConf.create(data)):
            real.append(name)
    if real:
        raise TuningOnRealData(
            f"hparams_search tunes on the sites' training data, and sites {', '.join(real)} read real patient "
            "files: the chosen hyperparameters would leak information not covered by their ε. Tune on "
            "synthetic or public data, or set tuning.allow_real_data=true (README 'Sweeps')"
        )
