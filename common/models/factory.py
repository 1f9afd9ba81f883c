"""Build the configured model and make it DP-conformant in one place."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from common.models.dp_conformance import make_dp_conformant


def build_model(model_cfg: DictConfig) -> nn.Module:
    """Instantiate ``model_cfg`` (a ``_target_`` builder) and make it DP-conformant.

    Every site and the server build the model through here, so the architecture that is
    trained privately is the one whose weights are exchanged.
    """
    if "_target_" not in model_cfg:
        raise ValueError(f"model config needs a _target_ builder, got keys {sorted(model_cfg)}")
    # `trainable` says what DP-SGD trains (see common.models.exchange); not a builder argument.
    builder_args = {k: v for k, v in model_cfg.items() if k != "trainable"}
    return make_dp_conformant(instantiate(builder_args))
