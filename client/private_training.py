"""The per-sample gradient strategy of DP-SGD (``training.grad_sample_mode``), one interface for all.

Every mode clips each sample's whole gradient to C and hands Opacus' optimizer the clipped
sum; they differ only in cost. Poisson sampling, noise and the accountant hook always come
from ``PrivacyEngine.make_private``, so accounting is identical whatever the mode.

| mode | how per-sample norms are found | backward passes |
|---|---|---|
| ``hooks`` | Opacus materialises every per-sample gradient | 1 |
| ``functorch`` | same, through ``torch.func`` (vmap) | 1 |
| ``ew`` | same, through torch's ExpandedWeights | 1 |
| ``ghost`` | Opacus fast gradient clipping: ghost norms for linear layers, per-sample gradients (one layer at a time) elsewhere | 2 |
| ``bk`` | book-keeping with ghost norms or per-sample gradients per layer, whichever is cheaper (:mod:`common.privacy.book_keeping`) | 1 |
| ``auto`` | ``bk``: fastest and leanest wherever measured (README "Full-model DP-SGD at clinical resolution"); its per-layer choice follows model and resolution | 1 |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader

from common.federation_config import GRAD_SAMPLE_MODES
from common.privacy.book_keeping import BookKeepingClipper

_AUTO = "bk"
_MIB = 2**20


@dataclass
class PrivateTraining:
    """What a DP training loop uses: forward through ``model``, ``backward(loss_per_sample)``, step."""

    mode: str
    model: nn.Module
    optimizer: DPOptimizer
    loader: DataLoader
    backward: Callable[[torch.Tensor], None]
    close: Callable[[], None]


def resolve_grad_sample_mode(mode: str) -> str:
    """The concrete mode for ``mode`` (``auto`` resolved).

    Raises
    ------
    ValueError
        If ``mode`` is not one of :data:`GRAD_SAMPLE_MODES`.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"training.grad_sample_mode={mode!r} is unknown; valid: {', '.join(GRAD_SAMPLE_MODES)}")
    return _AUTO if mode == "auto" else mode


def make_private(
    engine: PrivacyEngine,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: str,
    chunk_mib: float,
) -> PrivateTraining:
    """Opacus' ``make_private`` (Poisson loader, noisy optimizer, accountant hook) for ``mode``.

    ``chunk_mib`` bounds the work memory of per-sample norms in ``bk`` mode.
    """
    mode = resolve_grad_sample_mode(mode)
    common = dict(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )
    if mode in ("hooks", "functorch", "ew"):
        private_model, private_opt, private_loader = engine.make_private(**common, grad_sample_mode=mode)

        def backward(loss: torch.Tensor) -> None:
            # Mean of a per-sample loss: Opacus rescales it back to per-sample gradients.
            loss.mean().backward()

        return PrivateTraining(mode, private_model, private_opt, private_loader, backward, private_model._close)

    # ghost and bk: Opacus' fast-gradient-clipping optimizer adds noise to the clipped sum in p.grad.
    private_model, private_opt, _, private_loader = engine.make_private(**common, grad_sample_mode="ghost")
    if mode == "ghost":

        def ghost_backward(loss: torch.Tensor) -> None:
            # Opacus' two-pass backward on the per-sample loss vector (its criterion wrapper needs a
            # torch loss module; privmed's losses are functions returning [B]).
            DPTensorFastGradientClipping(private_model, private_opt, loss, "mean").backward()

        return PrivateTraining(mode, private_model, private_opt, private_loader, ghost_backward, private_model._close)
    # bk: keep Opacus' loader, optimizer and accounting; replace its two-pass norm hooks.
    private_model._close()
    inner = private_model._module
    clipper = BookKeepingClipper(inner, max_grad_norm=max_grad_norm, chunk_bytes=int(chunk_mib * _MIB))
    return PrivateTraining(mode, inner, private_opt, private_loader, clipper.backward, clipper.close)
