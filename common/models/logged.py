"""The trained model as an MLflow Model: logged once per run, loaded the same way by every consumer.

A run's final model is logged with ``mlflow.pytorch.log_model`` under artifact path ``model``
in torch.export's ``pt2`` format: ``mlflow.pytorch.load_model`` returns a module that predicts,
and the pyfunc flavour serves it (``mlflow models serve``), without unpickling anything and
without privmed being installed where it is served. (mlflow 3 refuses to load ``pickle``
models unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set, and a pickled privmed model
would need privmed's classes to be importable.)

The MLmodel's ``metadata["privmed"]`` says what the model is and under which privacy it was
trained: task, input size, model config, class names, each site's preprocessing window, each
site's sample-level ε and δ, ε_client where present, and the run's resolved config. Flat copies
of the privacy facts are tags of the logged model and of its registered version.

:func:`load_trained_model` rebuilds privmed's own module (``build_model`` of the logged model
config, filled with the logged weights), so code that inspects layers (encrypted inference)
sees the same ``nn.Module`` that was trained.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.federation_config import is_private, site_views
from common.models.factory import build_model

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
METADATA_KEY = "privmed"
TAG_PREFIX = "privmed."
# The graph torch.export writes needs torch alone to load and serve (privmed rebuilds its own
# module from the metadata, with the packages privmed itself is installed with).
_REQUIREMENTS = ("torch",)
# Batch of the input example: torch.export keeps a batch of 1 as a fixed size, 2 makes it dynamic.
_EXAMPLE_BATCH = 2


class LoggedModelError(LookupError):
    """A model URI that names nothing loadable, or a model without privmed's metadata."""


@dataclass(frozen=True)
class TrainedModel:
    """A logged privmed model in eval mode, with what a prediction must know about its inputs."""

    module: nn.Module
    task: str
    image_size: int
    class_names: list[str]
    # Distinct data.window settings of the training sites, in site order ([None]: raw values).
    windows: list[list[float] | None] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    uri: str = ""


def describe_model(cfg: DictConfig, *, metrics: dict[str, float]) -> dict[str, Any]:
    """The ``privmed`` metadata of a run's final model, from its resolved config and final metrics.

    Everything here is config (public) or a privacy accounting result; nothing is computed
    from patient data.
    """
    views = site_views(cfg)
    private = is_private(cfg.privacy)
    sites: dict[str, dict[str, float | None]] = {}
    preprocessing: list[dict[str, Any]] = []
    for name, view in views.items():
        # A site file may override privacy keys: each site's own view says whether it ran DP-SGD.
        site_private = is_private(view.privacy)
        eps = metrics.get(f"site.{name}.eps_sample")
        sites[name] = {
            "eps_sample": float(eps) if eps is not None and site_private else None,
            "delta": float(view.privacy.delta) if site_private else None,
        }
        if f"site.{name}.eps_svt" in metrics:  # strategy=svt: the extra pure-ε guarantee on its releases
            sites[name]["eps_svt"] = float(metrics[f"site.{name}.eps_svt"])
        window = view.data.get("window")
        window = [float(v) for v in window] if window is not None else None
        group = next((g for g in preprocessing if g["settings"]["window"] == window), None)
        if group is None:
            preprocessing.append({"sites": [name], "settings": {"window": window}})
        else:
            group["sites"].append(name)
    task = cfg.task
    classes = task.get("class_names") if task.name == "segmentation" else task.get("data", {}).get("classes")
    described: dict[str, Any] = {
        "task": str(task.name),
        "metric": str(task.metric),
        "image_size": int(task.image_size),
        "in_channels": int(cfg.model.get("in_channels", 1)),
        "class_names": [str(c) for c in classes] if classes else ["negative", "positive"],
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "preprocessing": preprocessing,
        "privacy": "dp" if private else "none",
        "sites": sites,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    client_dp = cfg.strategy.get("client_dp")
    if "eps_client" in metrics and client_dp is not None:
        described["eps_client"] = float(metrics["eps_client"])
        described["delta_client"] = float(client_dp.delta)
    return described


def model_tags(described: dict[str, Any]) -> dict[str, str]:
    """Flat ``privmed.*`` tags (privacy, task, input size, ε and δ per site, SVT ε, ε_client) of a model."""
    tags = {
        f"{TAG_PREFIX}privacy": described["privacy"],
        f"{TAG_PREFIX}task": described["task"],
        f"{TAG_PREFIX}image_size": str(described["image_size"]),
    }
    eps = [s["eps_sample"] for s in described["sites"].values() if s["eps_sample"] is not None]
    if eps:
        tags[f"{TAG_PREFIX}eps_sample_max"] = f"{max(eps):.6g}"
    for name, site in described["sites"].items():
        for key in ("eps_sample", "delta", "eps_svt"):
            if site.get(key) is not None:
                tags[f"{TAG_PREFIX}{key}.{name}"] = f"{site[key]:.6g}"
    for key in ("eps_client", "delta_client"):
        if key in described:
            tags[f"{TAG_PREFIX}{key}"] = f"{described[key]:.6g}"
    return tags


def log_trained_model(
    module: nn.Module,
    *,
    run_id: str,
    described: dict[str, Any],
    registered_model_name: str | None = None,
) -> ModelInfo:
    """Log ``module`` (complete, plain, eval mode) as run ``run_id``'s MLflow Model ``model``.

    Registers it as a new version of ``registered_model_name`` when given; the version carries
    :func:`model_tags`. Uses MLflow's process-wide tracking URI. Returns MLflow's ``ModelInfo``.
    """
    import mlflow
    from mlflow.models import infer_signature

    module = module.eval()
    size, channels = described["image_size"], described["in_channels"]
    # An all-zero batch (mid-grey after per-image standardisation): the example and the
    # signature must never carry a patient's image.
    example = np.zeros((_EXAMPLE_BATCH, channels, size, size), dtype=np.float32)
    with torch.no_grad():
        output = module(torch.from_numpy(example)).numpy()
    tags = model_tags(described)
    log.info("logging the final model as an MLflow Model (torch.export, %d px)", size)
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    # Created here in the run's experiment: log_model alone would file it under the fluent
    # "current" experiment, where runs:/<run id>/model does not find it.
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=MODEL_ARTIFACT,
        source_run_id=run_id,
        tags=tags,
        params=run.data.params,
    )
    info = mlflow.pytorch.log_model(
        module,
        name=MODEL_ARTIFACT,
        model_id=logged.model_id,
        run_id=run_id,
        serialization_format="pt2",
        signature=infer_signature(example, output),
        input_example=example,
        pip_requirements=[f"{name}=={version(name).split('+')[0]}" for name in _REQUIREMENTS],
        metadata={METADATA_KEY: described},
        registered_model_name=registered_model_name,
    )
    if registered_model_name:
        for key, value in tags.items():
            client.set_model_version_tag(registered_model_name, info.registered_model_version, key, value)
        log.info("registered as models:/%s/%s", registered_model_name, info.registered_model_version)
    return info


def load_trained_model(uri: str, *, tracking_uri: str | None = None) -> TrainedModel:
    """Load the model at ``uri`` (``runs:/<id>/model``, ``models:/<name>/<version>`` or a local folder).

    Raises
    ------
    LoggedModelError
        If ``uri`` names nothing in MLflow, is not an MLflow Model, or lacks privmed's metadata.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as tmp:
        if Path(uri).is_dir():
            folder = Path(uri)
        else:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri, registry_uri=tracking_uri
                )
                folder = Path(local)
            except (MlflowException, OSError) as err:
                where = tracking_uri or mlflow.get_tracking_uri()
                first = str(err).splitlines()[0]
                raise LoggedModelError(f"{uri!r}: no such model in MLflow at {where} ({first})") from err
        if not (folder / "MLmodel").is_file():
            raise LoggedModelError(f"{uri!r}: not an MLflow Model (no MLmodel file)")
        described = (Model.load(str(folder)).metadata or {}).get(METADATA_KEY)
        if not described:
            raise LoggedModelError(f"{uri!r}: an MLflow Model without privmed metadata (not logged by privmed)")
        graph = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    module = build_model(OmegaConf.create(described["model"]))
    try:
        module.load_state_dict(graph.state_dict(), strict=True)
    except RuntimeError as err:
        raise LoggedModelError(f"{uri!r}: weights do not fit its model config ({str(err).splitlines()[0]})") from err
    windows = [g["settings"]["window"] for g in described["preprocessing"]]
    return TrainedModel(
        module=module.eval(),
        task=described["task"],
        image_size=int(described["image_size"]),
        class_names=list(described["class_names"]),
        windows=windows,
        metadata=described,
        uri=uri,
    )
