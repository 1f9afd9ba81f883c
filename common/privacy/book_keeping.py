"""Per-sample clipping in a single backward pass ("book-keeping"), with mixed ghost norms.

Why not an Opacus mode: Opacus' ghost clipping runs two full backward passes (norms, then
the re-weighted loss), and its hook mode keeps every per-sample gradient, ~45 MB per sample
for ResNet-18. Book-keeping (Bu et al. 2023, "Differentially Private Optimization on Large
Model at Small Cost") keeps each trained layer's input and output gradient instead, computes
the per-sample norms from them (ghost norm or per-sample gradient, whichever is cheaper per
layer: :mod:`common.privacy.per_sample_norms`), and forms the clipped sum directly as one
ordinary weight gradient per layer. No implementation of it is installable from PyPI
(fastDP is GitHub-only), so it is written here on top of Opacus' samplers, noise and
accounting; the result is exactly Opacus' flat clipping (tested against it and against
one-sample-at-a-time gradients in ``tests/test_per_sample_gradients.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.privacy.per_sample_norms import (
    PER_SAMPLE,
    norm_method,
    per_sample_grads_chunked,
    per_sample_sq_norms,
    sq_norms_of,
)

# Opacus' clipping factor C / (‖g‖ + ε): the same ε keeps every mode's result identical.
_OPACUS_CLIP_EPS = 1e-6
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class _Record:
    """One trained layer of the current forward pass and what step 5 will need from it."""

    module: nn.Module
    activation: torch.Tensor | None
    backprop: torch.Tensor | None = None
    grads: dict[nn.Parameter, torch.Tensor] | None = None


class BookKeepingClipper:
    """Clipped per-sample gradient sums in one backward pass, layer by layer.

    1. Forward: a hook on every module with trainable parameters of its own keeps the
       module's input (detached) and hooks the module's output gradient.
    2. One backward pass of ``Σ_i loss_i`` that computes no weight gradient
       (``torch.autograd.grad`` to the first trained layers' outputs). As each layer's output
       gradient ``b`` arrives:
    3. that layer's squared per-sample norms are added to ``‖g_i‖²``: ghost norm or per-sample
       gradient, the cheaper for its shape (:mod:`common.privacy.per_sample_norms`). The layer
       then keeps the smaller of what step 5 can use: its per-sample gradients (computed anyway
       by the per-sample method), or its input and ``b``. Everything else is freed at once, so
       the activations are released as in an ordinary backward pass instead of all output
       gradients being held until the end.
    4. Clipping factors ``c_i = min(1, C / (‖g_i‖ + 1e-6))`` (Opacus' flat clipping).
    5. Per layer, ``Σ_i c_i g_i``: from the kept per-sample gradients, or as one ordinary weight
       gradient with output gradient ``c ⊙ b`` (``Σ_i c_i g_i`` is linear in ``b``). Written to
       ``p.grad``, and the layer's kept tensors are freed.

    Noise and accounting are Opacus' (``DPOptimizerFastGradientClipping`` reads ``p.grad``
    as the clipped sum). Correct only if every layer treats samples independently, which
    :func:`common.models.find_dp_violations` checks (no BatchNorm). A trained layer the loss
    does not reach gets a zero gradient (it contributes to neither the norm nor the sum).

    Parameters
    ----------
    model : nn.Module
        The plain (unwrapped) model; hooks are attached to it.
    max_grad_norm : float
        C, the per-sample clipping norm.
    chunk_bytes : int
        Work memory bound for the per-sample norm computations.
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float, chunk_bytes: int) -> None:
        if max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        self.max_grad_norm = float(max_grad_norm)
        self.chunk_bytes = int(chunk_bytes)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._records: list[_Record] = []
        self._roots: list[torch.Tensor] = []  # outputs of trained layers fed by no trained layer
        self._sq: torch.Tensor | None = None
        self._capturing = True
        self._handles = [
            module.register_forward_hook(self._capture)
            for module in model.modules()
            if any(p.requires_grad for p in module.parameters(recurse=False))
        ]
        self.last_norms: torch.Tensor | None = None  # for tests and debugging; never released

    def _capture(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # 1. Keep what steps 3 and 5 need; only training passes with autograd on are clipped.
        if not (self._capturing and module.training and torch.is_grad_enabled()):
            return
        if any(r.module is module for r in self._records):
            raise ValueError(
                f"{type(module).__name__} ran twice in one forward pass (shared weights): its per-sample "
                "gradient is not the sum of its two uses' here; use grad_sample_mode=hooks"
            )
        if not isinstance(output, torch.Tensor) or len(inputs) != 1:
            raise ValueError(f"{type(module).__name__}: book-keeping needs one tensor input and output")
        record = _Record(module, inputs[0].detach())
        self._records.append(record)
        if output.requires_grad:
            # The output itself is not kept (that would hold every activation to the end).
            output.register_hook(lambda b, record=record: self._on_backprop(record, b))
            if not inputs[0].requires_grad:
                self._roots.append(output)

    @torch.no_grad()
    def _on_backprop(self, record: _Record, b: torch.Tensor) -> None:
        # 3. This layer's share of ‖g_i‖², then keep the smaller of per-sample gradients or (a, b).
        if self._sq is None:  # a backward pass that is not this clipper's: nothing to record
            return
        module, a = record.module, record.activation
        n = b.shape[0]
        if norm_method(module, b) != PER_SAMPLE:
            self._sq += per_sample_sq_norms(module, a, b, chunk_bytes=self.chunk_bytes)
            record.backprop = b
            return
        grads = per_sample_grads_chunked(module, a, b, chunk_bytes=self.chunk_bytes)
        self._sq += sq_norms_of(grads, n, self._sq)
        kept_grads = sum(g.numel() for g in grads.values())
        if kept_grads > a.numel() + b.numel():
            record.backprop = b  # e.g. a wide 3×3 conv at low resolution: its input and b are smaller
        else:
            record.grads, record.activation = grads, None

    def backward(self, loss_per_sample: torch.Tensor) -> None:
        """Set ``p.grad`` of every trainable parameter to the clipped per-sample gradient sum."""
        records, self._records = self._records, []
        roots, self._roots = self._roots, []
        n = loss_per_sample.shape[0]
        if n == 0 or not records:  # an empty Poisson batch: nothing to clip, noise still follows
            for p in self.params:
                p.grad = torch.zeros_like(p)
            return
        # 2.-3. One backward pass; the output hooks do step 3 layer by layer. Every trained layer
        #    lies between the loss and a root, so reaching the roots reaches them all.
        self._sq = torch.zeros(n, dtype=loss_per_sample.dtype, device=loss_per_sample.device)
        try:
            torch.autograd.grad(loss_per_sample.sum(), roots, allow_unused=True)
            sq = self._sq
        finally:
            self._sq = None
        del roots
        # 4. Clipping factors.
        self.last_norms = sq.sqrt()
        coef = (self.max_grad_norm / (self.last_norms + _OPACUS_CLIP_EPS)).clamp(max=1.0)
        # 5. The clipped sum per layer (a layer's forward recomputed here is not a new training
        #    pass: not captured).
        self._capturing = False
        try:
            while records:
                self._write_clipped_sum(records.pop(0), coef)
        finally:
            self._capturing = True
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    @staticmethod
    def _write_clipped_sum(record: _Record, coef: torch.Tensor) -> None:
        params = [p for p in record.module.parameters(recurse=False) if p.requires_grad]
        if record.grads is not None:
            grads = [torch.einsum("n,n...->...", coef.to(record.grads[p].dtype), record.grads[p]) for p in params]
        elif record.backprop is not None:
            b = record.backprop
            scaled = b * coef.view(-1, *([1] * (b.dim() - 1))).to(b.dtype)
            grads = _weighted_grads(record.module, record.activation, scaled, params)
        else:  # the loss did not reach this layer
            grads = [torch.zeros_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g if p.grad is None else p.grad + g

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._records, self._roots = [], [], []


def _weighted_grads(
    module: nn.Module, activation: torch.Tensor, scaled: torch.Tensor, params: list[nn.Parameter]
) -> list[torch.Tensor]:
    """Gradient of ``⟨module(activation), scaled⟩`` with respect to ``params``."""
    if isinstance(module, _CONVS) and isinstance(module.padding, tuple) and module.padding_mode == "zeros":
        # The convolution's own weight-gradient kernel: no forward recomputation.
        weight, bias = module.weight, module.bias
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            scaled, activation, weight, [weight.shape[0]] if bias is not None else None,
            module.stride, module.padding, module.dilation, False, [0] * len(module.stride), module.groups,
            [False, weight.requires_grad, bias is not None and bias.requires_grad],
        )
        by_param = {id(weight): grad_w} | ({id(bias): grad_b} if bias is not None else {})
        return [by_param[id(p)] for p in params]
    with torch.enable_grad():
        # Small layers (norms, heads): recomputing their forward is cheaper than special-casing each.
        out = module(activation)
        return list(torch.autograd.grad(out, params, grad_outputs=scaled))
