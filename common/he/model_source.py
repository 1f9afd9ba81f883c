"""Load the model to serve (or to check against): an MLflow model URI or a local state dict.

Accepted, in this order:

- an MLflow Model (``runs:/<id>/model``, ``models:/<name>/<version>``, or a local folder with an
  ``MLmodel`` file): privmed's logged model is rebuilt with its metadata
  (:func:`common.models.logged.load_trained_model`), another pytorch Model is
  ``mlflow.pytorch.load_model``'s module with the run's config;
- an older run's ``model/state_dict.pt`` + ``model/model_config.yaml`` (``runs:/<id>/model``),
  with the run's ``config/resolved_config.yaml`` for the sites' intensity windows;
- a local ``state_dict.pt`` (or a folder holding it) with ``model_config.yaml`` beside it.

Besides the module, inference needs the input size and how training prepared pixels (each
site's ``data.window``); both are public config values.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.models.factory import build_model
from common.models.logged import METADATA_KEY, load_trained_model

log = logging.getLogger(__name__)

STATE_DICT = "state_dict.pt"
MODEL_CONFIG = "model_config.yaml"
RESOLVED_CONFIG = "config/resolved_config.yaml"
MLMODEL = "MLmodel"


class ModelSourceError(LookupError):
    """Nothing loadable at the given model reference (the message says what was tried)."""


@dataclass(frozen=True)
class LoadedModel:
    """A trained model in eval mode, with what inference must know about its inputs."""

    module: nn.Module
    image_size: int
    # Distinct data.window settings of the training sites ([] when unknown).
    windows: list[list[float] | None] = field(default_factory=list)
    class_names: list[str] = field(default_factory=lambda: ["negative", "positive"])
    source: str = ""


def load_model(reference: str) -> LoadedModel:
    """Load ``reference`` (see the module docstring).

    Raises
    ------
    ModelSourceError
        If it names nothing loadable.
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder, run_config = _local_files(reference, Path(tmp))
        if (folder / MLMODEL).is_file():
            return _from_mlflow_model(reference, folder, run_config)
        return _from_state_dict(reference, folder, run_config)


def _local_files(reference: str, tmp: Path) -> tuple[Path, DictConfig | None]:
    """The model's folder (downloaded for MLflow URIs) and its run's resolved config, if any."""
    if ":/" not in reference:
        path = Path(reference)
        folder = path.parent if path.is_file() and path.suffix == ".pt" else path
        if not folder.is_dir():
            raise ModelSourceError(f"{reference!r}: no such model folder or state dict file")
        # A run's downloaded artifacts: <run>/model/ beside <run>/config/resolved_config.yaml.
        config = folder.parent / RESOLVED_CONFIG
        return folder, OmegaConf.load(config) if config.is_file() else None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(tmp / "model")))
    except (MlflowException, OSError) as err:
        raise ModelSourceError(f"{reference!r}: not found in MLflow at {mlflow.get_tracking_uri()} ({err})") from err
    run_config = None
    if reference.startswith("runs:/"):
        run_id = reference[len("runs:/") :].split("/", 1)[0]
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=RESOLVED_CONFIG, dst_path=str(tmp / "run")
            )
            run_config = OmegaConf.load(path)
        except (MlflowException, OSError):
            log.info("%s: the run has no %s; intensity windows unknown", reference, RESOLVED_CONFIG)
    return folder, run_config


def _from_mlflow_model(reference: str, folder: Path, run_config: DictConfig | None) -> LoadedModel:
    import mlflow
    from mlflow.models import Model

    metadata: dict[str, Any] = (Model.load(str(folder)).metadata or {}).get(METADATA_KEY) or {}
    if "model" in metadata:
        # privmed's own logged model: rebuilt as the nn.Module that was trained (the plan needs its layers).
        trained = load_trained_model(str(folder))
        windows = _distinct(trained.windows)
        return LoadedModel(trained.module, trained.image_size, windows, trained.class_names, reference)
    module = mlflow.pytorch.load_model(str(folder), map_location="cpu").eval()
    if "image_size" in metadata:
        image_size = int(metadata["image_size"])
    elif run_config is not None:
        image_size = int(run_config.task.image_size)
    else:
        raise ModelSourceError(f"{reference!r}: an MLflow Model without privmed metadata (input size unknown)")
    windows = [g["settings"].get("window") for g in metadata.get("preprocessing", [])]
    if not windows and run_config is not None:
        windows = _site_windows(run_config)
    classes = metadata.get("class_names") or _class_names(run_config)
    return LoadedModel(module, image_size, _distinct(windows), list(classes), reference)


def _from_state_dict(reference: str, folder: Path, run_config: DictConfig | None) -> LoadedModel:
    state_path, config_path = folder / STATE_DICT, folder / MODEL_CONFIG
    if not state_path.is_file() or not config_path.is_file():
        raise ModelSourceError(
            f"{reference!r}: neither an MLflow Model ({MLMODEL}) nor {STATE_DICT} + {MODEL_CONFIG}"
        )
    model_cfg = OmegaConf.load(config_path)
    module = build_model(model_cfg)
    try:
        module.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True), strict=True)
    except RuntimeError as err:
        raise ModelSourceError(f"{state_path} does not match {config_path} ({str(err).splitlines()[0]})") from err
    if run_config is not None:
        image_size = int(run_config.task.image_size)
    elif "image_size" in model_cfg:
        image_size = int(model_cfg.image_size)
    else:
        raise ModelSourceError(f"{reference!r}: input size unknown (no run config, no model.image_size)")
    windows = _site_windows(run_config) if run_config is not None else []
    return LoadedModel(module.eval(), image_size, windows, _class_names(run_config), reference)


def _site_windows(cfg: DictConfig) -> list[list[float] | None]:
    default = cfg.task.get("data", {}).get("window")
    windows = [site.get("data", {}).get("window", default) for site in cfg.federation.get("sites", {}).values()]
    return _distinct([OmegaConf.to_container(w) if OmegaConf.is_config(w) else w for w in windows or [default]])


def _class_names(cfg: DictConfig | None) -> list[str]:
    classes = cfg.task.get("data", {}).get("classes") if cfg is not None else None
    return [str(c) for c in classes] if classes else ["negative", "positive"]


def _distinct(windows: list) -> list[list[float] | None]:
    out: list[list[float] | None] = []
    for window in windows:
        value = [float(v) for v in window] if window is not None else None
        if value not in out:
            out.append(value)
    return out
