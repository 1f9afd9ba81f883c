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
    # `trainable` (what DP-SGD trains) and `init` (where weights come from) are not builder arguments.
    builder_args = {k: v for k, v in model_cfg.items() if k not in ("trainable", "init")}
    return make_dp_conformant(instantiate(builder_args))


def resnet_depth(model_cfg: DictConfig) -> int:
    """Depth of the configured ResNet or UNet ResNet encoder (18 for anything else)."""
    if "depth" in model_cfg:
        return int(model_cfg.depth)
    digits = "".join(ch for ch in str(model_cfg.get("encoder_name", "")) if ch.isdigit())
    return int(digits) if digits else 18
