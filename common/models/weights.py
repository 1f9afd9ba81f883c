"""Move model weights between Opacus-wrapped torch models and plain state dicts."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

_OPACUS_PREFIX = "_module."


def unwrap_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Return the state dict of ``model`` without Opacus' ``_module.`` prefix.

    The server and the other sites hold plain models; a wrapped key would silently fail
    to load there (or load nothing with ``strict=False``).
    """
    inner = getattr(model, "_module", model)
    state = inner.state_dict()
    return OrderedDict((k.removeprefix(_OPACUS_PREFIX), v.detach().cpu()) for k, v in state.items())


def state_dict_to_numpy(state: dict[str, torch.Tensor]) -> OrderedDict[str, np.ndarray]:
    """Convert a state dict to numpy arrays (CPU), keeping key order."""
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in state.items())


def load_numpy_state(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load numpy arrays into ``model``, failing loudly on any missing or extra key.

    Raises
    ------
    ValueError
        If a received array is not finite (a NaN update must never reach a model) or
        the keys do not match the model.
    """
    bad = [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"received weights contain NaN/inf in {len(bad)} tensors, e.g. {bad[:3]}")
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}
    inner = getattr(model, "_module", model)
    missing, unexpected = inner.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights do not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
