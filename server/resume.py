"""``resume=<MLflow run id>``: which run to continue, with which config, from which round.

A run can be resumed when it exists, is not finished (a killed coordinator leaves it
RUNNING; a crash leaves it FAILED) and was made with the same config. The config check
compares the resolved configs except ``resume`` and the output paths: a resumed
``privmed-simulate`` gets a new Hydra output dir, but its simulated sites must keep using the
ledgers and data under the recorded ``state_root`` / ``data_root``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from common.federation_config import ConfigError
from common.run_config import tracking_uri
from server.mlflow_sink import flatten

RESOLVED_CONFIG = "config/resolved_config.yaml"
# Keys that may differ between the original command and the one resuming it.
_VOLATILE_KEYS = ("resume",)
# Differing keys named in the error before "…".
_MAX_NAMED = 6


def resumable_run(client: MlflowClient, run_id: str) -> None:
    """Check that ``run_id`` exists and has not finished.

    Raises
    ------
    ConfigError
        If the run is unknown or finished.
    """
    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(f"resume={run_id}: no such MLflow run at {client.tracking_uri}") from err
    if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
        why = run.data.tags.get("privmed.stop_reason")
        raise ConfigError(
            f"resume={run_id}: the run has finished{f' (stopped early: {why})' if why else ''}; "
            "nothing to resume (start a new run instead)"
        )


def recorded_config(client: MlflowClient, run_id: str) -> DictConfig:
    """The resolved config the run logged when it started.

    Raises
    ------
    ConfigError
        If the run has no ``config/resolved_config.yaml`` (not a privmed federation run).
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, RESOLVED_CONFIG, tmp)
        except (MlflowException, OSError) as err:
            raise ConfigError(f"resume={run_id}: the run has no {RESOLVED_CONFIG}; not a privmed federation run") from err
        return OmegaConf.create(OmegaConf.to_container(OmegaConf.load(Path(path))))


def config_differences(cfg: DictConfig, recorded: DictConfig) -> list[str]:
    """Keys whose value in ``cfg`` differs from ``recorded``, except volatile keys and output paths."""
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    before = flatten(OmegaConf.to_container(recorded, resolve=True))
    # Paths under the output dir of the command: map the current roots onto the recorded ones.
    roots = [(str(cfg.get(k)), str(recorded.get(k))) for k in ("data_root", "state_root") if cfg.get(k) is not None]
    for key, value in current.items():
        for now, then in roots:
            if value.startswith(now):
                current[key] = then + value[len(now):]
                break
    keys = sorted(set(current) | set(before))
    return [k for k in keys if k.split(".")[0] not in _VOLATILE_KEYS and current.get(k) != before.get(k)]


def check_same_config(cfg: DictConfig, recorded: DictConfig, run_id: str) -> None:
    """Raise :class:`ConfigError` naming the keys where ``cfg`` differs from the run's config."""
    differences = config_differences(cfg, recorded)
    if differences:
        shown = ", ".join(
            f"{k}={flatten(OmegaConf.to_container(cfg, resolve=True)).get(k, '<absent>')} "
            f"(run: {flatten(OmegaConf.to_container(recorded)).get(k, '<absent>')})"
            for k in differences[:_MAX_NAMED]
        )
        more = f" and {len(differences) - _MAX_NAMED} more" if len(differences) > _MAX_NAMED else ""
        raise ConfigError(
            f"resume={run_id}: the run was made with another config: {shown}{more}; resume with the run's own "
            "overrides (or, in simulation, with resume=<id> alone)"
        )


def config_for_resume(cfg: DictConfig, *, as_recorded: bool) -> DictConfig:
    """The config a resumed simulation runs with: the run's own, with ``resume`` set.

    Parameters
    ----------
    cfg : DictConfig
        The composed config of the resuming command (``cfg.resume`` is the run id).
    as_recorded : bool
        True when the command gave no override but ``resume``: take the run's config as it was.
        False: the command's config must equal the run's (except ``resume`` and output paths).

    Raises
    ------
    ConfigError
        If the run is unknown, finished, or was made with another config.
    """
    run_id = str(cfg.resume)
    client = MlflowClient(tracking_uri(cfg.mlflow))
    resumable_run(client, run_id)
    recorded = recorded_config(client, run_id)
    if not as_recorded:
        check_same_config(cfg, recorded, run_id)
    resumed = OmegaConf.merge(recorded, {"resume": run_id})
    OmegaConf.set_readonly(resumed, True)
    return resumed
