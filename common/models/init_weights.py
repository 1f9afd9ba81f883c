"""``model.init``: where a federation's initial weights come from.

- ``seeded``: the seeded random initialisation (rebuilt identically from ``seed`` everywhere);
- ``/abs/path/state_dict.pt``: a ``torch.save``\\ d state dict of this model;
- ``runs:/<run id>/model`` or ``models:/<name>/<version>``: the final model an earlier privmed
  run logged to MLflow (an MLflow pytorch Model; runs from before it was one: ``model/state_dict.pt``);
- ``imagenet``: torchvision's ImageNet ResNet weights, read from the torch hub cache (never
  downloaded: the error names the file to place there). A ResNet gets the whole backbone, the
  UNet its encoder; the head stays seeded.

RGB stems (3 input channels) become one grey channel by summing over colour, which keeps the
response to a grey image whose three channels are equal. Frozen weights then come from the
file, and their SHA-256 is what every site checks (:func:`common.models.exchange.frozen_digest`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

SEEDED = "seeded"
IMAGENET = "imagenet"
RUNS_PREFIX = "runs:/"
MODELS_PREFIX = "models:/"
# torchvision's ImageNet checkpoints, by ResNet depth (file names of the IMAGENET1K_V1 weights).
_IMAGENET_FILES = {18: "resnet18-f37072fd.pth", 34: "resnet34-b627a593.pth", 50: "resnet50-0676ba61.pth"}
_IMAGENET_URL = "https://download.pytorch.org/models/"
_STEM = "conv1.weight"
# BatchNorm statistics have no place in the GroupNorm models (dp_conformance.py).
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
_SHOW_KEYS = 5


class InitWeightsError(ValueError):
    """``model.init`` cannot be used; the message names the source and what to do."""


def imagenet_file(depth: int) -> Path:
    """Where torchvision keeps the ImageNet ResNet-``depth`` checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    if depth not in _IMAGENET_FILES:
        raise InitWeightsError(f"model.init=imagenet: no ImageNet weights for ResNet-{depth}; valid depths {sorted(_IMAGENET_FILES)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / _IMAGENET_FILES[depth]


def read_init_state(init: str, *, tracking_uri: str | None, depth: int = 18) -> dict[str, torch.Tensor]:
    """The state dict ``model.init`` names (not yet matched to a model).

    Raises
    ------
    InitWeightsError
        If the file, run or cache entry is missing or unreadable.
    """
    if init == IMAGENET:
        path = imagenet_file(depth)
        if not path.is_file():
            raise InitWeightsError(
                f"model.init=imagenet: {path} does not exist and nothing is downloaded at run time; place "
                f"torchvision's ResNet-{depth} ImageNet checkpoint there ({_IMAGENET_URL}{path.name}, "
                "fetched on a machine with internet access), or set TORCH_HOME to where it is"
            )
        return _load_file(path, init)
    if init.startswith((RUNS_PREFIX, MODELS_PREFIX)):
        return _from_mlflow(init, tracking_uri)
    path = Path(init)
    if not path.is_absolute():
        raise InitWeightsError(
            f"model.init={init!r}: use seeded, imagenet, runs:/<run id>/model, models:/<name>/<version> or an absolute path"
        )
    if not path.is_file():
        raise InitWeightsError(
            f"model.init={init}: no such file here; every site needs the same file at this path "
            "(README \"Pretrained initialisation\" says how a hospital obtains it)"
        )
    return _load_file(path, init)


def _load_file(path: Path, source: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises several unrelated types for bad files
        raise InitWeightsError(f"model.init={source}: {path} is not a readable torch state dict ({err})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InitWeightsError(f"model.init={source}: {path} does not hold a state dict (name -> tensor)")
    return dict(state)


def _from_mlflow(uri: str, tracking_uri: str | None) -> dict[str, torch.Tensor]:
    import mlflow

    try:
        # The logged MLflow pytorch Model (the contract of the final model; torch.export's
        # module keeps the trained module's state-dict keys).
        return {k: v.detach().cpu() for k, v in _load_mlflow_model(uri, tracking_uri).state_dict().items()}
    except Exception as model_err:  # no MLmodel: older runs log model/state_dict.pt only
        if not uri.startswith(RUNS_PREFIX):
            raise InitWeightsError(
                f"model.init={uri}: no MLflow model there at {tracking_uri or os.environ.get('MLFLOW_TRACKING_URI')} "
                f"({str(model_err).splitlines()[0]})"
            ) from model_err
        run_id = uri[len(RUNS_PREFIX):].split("/")[0]
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{RUNS_PREFIX}{run_id}/model/state_dict.pt", tracking_uri=tracking_uri
            )
        except Exception as err:
            raise InitWeightsError(
                f"model.init={uri}: run {run_id} has neither an MLflow model nor model/state_dict.pt at "
                f"{tracking_uri or os.environ.get('MLFLOW_TRACKING_URI')} ({model_err}; {err})"
            ) from err
        return _load_file(Path(local), uri)


def _load_mlflow_model(uri: str, tracking_uri: str | None) -> nn.Module:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pytorch.load_model(uri, map_location="cpu")


def apply_init(model: nn.Module, init: str, *, tracking_uri: str | None, depth: int = 18) -> None:
    """Load ``model.init``'s weights into ``model`` (built and DP-conformant), in place.

    A state dict of this model must match it key for key and shape for shape (BatchNorm
    statistics and an RGB stem are adapted); ImageNet weights fill the ResNet backbone or the
    UNet encoder and leave the head seeded.

    Raises
    ------
    InitWeightsError
        If the source is missing, or its keys/shapes do not fit ``model`` (the first bad keys named).
    """
    if init == SEEDED:
        return
    source = read_init_state(init, tracking_uri=tracking_uri, depth=depth)
    target = model.state_dict()
    prefix = "encoder." if any(k.startswith("encoder.") for k in target) else ""
    if init == IMAGENET:
        source = {prefix + k: v for k, v in source.items() if not k.startswith("fc.")}
    source = {k: v for k, v in source.items() if not k.endswith(_BN_STATS)}
    stem = prefix + _STEM
    if stem in source and stem in target and source[stem].shape[1] == 3 and target[stem].shape[1] == 1:
        source[stem] = source[stem].sum(dim=1, keepdim=True)
    unexpected = [k for k in source if k not in target]
    wrong = [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in source
             if k in target and source[k].shape != target[k].shape]
    missing = [] if init == IMAGENET else [k for k in target if k not in source]
    if unexpected or wrong or missing:
        parts = [f"{label} {keys[:_SHOW_KEYS]}" for label, keys in
                 (("unexpected keys", unexpected), ("shape mismatches", wrong), ("missing keys", missing)) if keys]
        raise InitWeightsError(f"model.init={init}: weights do not fit the configured model: " + "; ".join(parts))
    model.load_state_dict(source, strict=False)
