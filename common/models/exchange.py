"""What sites and server exchange: only the trained part of a model.

Frozen weights are the initialisation (seeded random, or the file ``model.init`` names), rebuilt
identically everywhere from ``(model config, seed)``; they depend on no site's data and never travel. Exchanging only the
trained parameters keeps client-level DP noise off frozen weights (Flower's DP wrappers
noise every array they aggregate) and cuts a ResNet-18 message from 45 MB to 40 kB.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from functools import lru_cache

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.models.factory import build_model, resnet_depth
from common.models.init_weights import SEEDED, apply_init
from common.models.trainable import select_trainable


def initial_model(model_cfg: DictConfig, seed: int, *, tracking_uri: str | None = None) -> nn.Module:
    """The federation's initial model: seeded, then ``model_cfg.init``'s weights, with
    ``model_cfg.trainable`` selected (a fresh copy). ``tracking_uri`` serves ``runs:/`` inits.

    Raises
    ------
    InitWeightsError
        If ``model.init`` names weights that are missing here or do not fit the model.
    """
    key = json.dumps(OmegaConf.to_container(model_cfg, resolve=True), sort_keys=True)
    return copy.deepcopy(_initial_template(key, seed, tracking_uri))


@lru_cache(maxsize=4)
def _initial_template(model_json: str, seed: int, tracking_uri: str | None) -> nn.Module:
    # Building and fixing a ResNet takes ~0.5 s; a node answers many messages, so build once.
    model_cfg = OmegaConf.create(json.loads(model_json))
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    apply_init(model, str(model_cfg.get("init", SEEDED)), tracking_uri=tracking_uri, depth=resnet_depth(model_cfg))
    select_trainable(model, model_cfg.trainable)
    return model


def exchanged_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Trainable parameters and all buffers (buffers may hold data statistics), unwrapped."""
    inner = getattr(model, "_module", model)
    state = OrderedDict((n, p.detach().cpu().clone()) for n, p in inner.named_parameters() if p.requires_grad)
    state.update((n, b.detach().cpu().clone()) for n, b in inner.named_buffers())
    return state


def frozen_digest(model: nn.Module) -> str:
    """SHA-256 of the frozen parameters: server and sites must agree on them bit for bit."""
    digest = hashlib.sha256()
    inner = getattr(model, "_module", model)
    for name, p in inner.named_parameters():
        if not p.requires_grad:
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_exchanged(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load received exchanged weights into ``model``.

    Raises
    ------
    ValueError
        If the keys are not exactly the model's exchanged set, or a tensor is NaN/inf.
    """
    expected = set(exchanged_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"received weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"received weights contain NaN/inf in {bad[:3]}")
    inner = getattr(model, "_module", model)
    inner.load_state_dict(state, strict=False)
