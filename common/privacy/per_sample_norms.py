"""Per-sample gradient norms of one layer, by whichever of two exact methods is cheaper.

For a layer whose weight gradient is ``g_i = b_iᵀ a_i`` (a conv after unfolding, or a linear
layer), with ``T`` positions, ``d`` input and ``p`` output features per sample:

- **per-sample gradient**: materialise ``g_i`` (``T·d·p`` multiply-adds, ``d·p`` floats per
  sample) and take its norm. Opacus' own grad samplers do this.
- **ghost norm** (Goodfellow 2015; Li et al. 2021; Bu et al. 2022 for convolutions):
  ``‖g_i‖² = Σ_{t,s} (a_i a_iᵀ)_{ts} (b_i b_iᵀ)_{ts}`` (``T²·(d+p)`` multiply-adds, ``T²``
  floats per sample); never forms ``g_i``.

Bu et al. 2022 ("Scalable and Efficient Training of Large CNNs with DP", mixed ghost
clipping) choose per layer: ghost norm where ``T·(d+p) < d·p`` (late, wide, low-resolution
layers), per-sample gradients elsewhere (early, high-resolution layers). Both are exact, so
the choice changes cost, never the clipped result. Opacus 1.6 has ghost norms only for
``nn.Linear``/``nn.Embedding``; the conv ghost norm is written here on Opacus' own ``unfold2d``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.utils.tensor_utils import unfold2d
from torch import nn

GHOST = "ghost"
PER_SAMPLE = "per_sample"


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def _matrix_shape(module: nn.Module, backprop: torch.Tensor) -> tuple[int, int, int] | None:
    """``(T, d, p)`` of a layer whose per-sample weight gradient is ``b_iᵀ a_i``, else None."""
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        d = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        return backprop.shape[2] * backprop.shape[3], d, module.out_channels
    if isinstance(module, nn.Linear):
        return backprop[0].numel() // module.out_features, module.in_features, module.out_features
    return None


def norm_method(module: nn.Module, backprop: torch.Tensor) -> str:
    """``"ghost"`` or ``"per_sample"``: the cheaper exact method for this layer and input size."""
    shape = _matrix_shape(module, backprop)
    if shape is None:
        return PER_SAMPLE
    positions, d, p = shape
    return GHOST if positions * (d + p) < d * p else PER_SAMPLE


def _work_bytes_per_sample(module: nn.Module, backprop: torch.Tensor, method: str) -> int:
    """Temporaries one sample needs: unfolded input plus the Gram matrices or the gradient."""
    shape = _matrix_shape(module, backprop)
    if shape is None:
        # Opacus' samplers for norms and the like recompute the layer's output and multiply it by b.
        return sum(p.numel() for p in _trainable(module)) + 3 * backprop[0].numel()
    positions, d, p = shape
    unfolded = positions * d if isinstance(module, nn.Conv2d) else 0
    return unfolded + (2 * positions * positions if method == GHOST else d * p)


def _as_matrices(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` as ``[n, T, d]`` and ``b`` as ``[n, T, p]`` so that ``g_i = b_iᵀ a_i``."""
    if isinstance(module, nn.Conv2d):
        cols = unfold2d(a, kernel_size=module.kernel_size, padding=module.padding, stride=module.stride,
                        dilation=module.dilation)  # [n, d, T]
        return cols.transpose(1, 2), b.flatten(2).transpose(1, 2)
    return a.reshape(a.shape[0], -1, module.in_features), b.reshape(b.shape[0], -1, module.out_features)


def _ghost_sq_norms(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_m, b_m = _as_matrices(module, a, b.to(a.dtype))
    sq = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    if module.weight.requires_grad:
        if a_m.shape[1] == 1:  # one position: ‖b aᵀ‖² = ‖a‖²‖b‖²
            sq = sq + a_m.pow(2).sum((1, 2)) * b_m.pow(2).sum((1, 2))
        else:
            sq = sq + (a_m @ a_m.transpose(1, 2)).mul_(b_m @ b_m.transpose(1, 2)).sum((1, 2))
    if module.bias is not None and module.bias.requires_grad:
        sq = sq + b_m.sum(1).pow(2).sum(1)
    return sq


def per_sample_grads(module: nn.Module, activation: torch.Tensor, backprop: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Each sample's gradient ``[B, *p.shape]`` for the module's trainable parameters (Opacus' samplers)."""
    sampler = GradSampleModule.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
    grads = sampler(module, [activation], backprop)
    return {p: grads[p] for p in _trainable(module)}


def sq_norms_of(grads: dict[nn.Parameter, torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
    """Squared norms ``[n]`` of per-sample gradients summed over parameters."""
    sq = torch.zeros(n, dtype=like.dtype, device=like.device)
    for g in grads.values():
        sq = sq + g.reshape(n, -1).pow(2).sum(1)
    return sq


def _per_sample_sq_norms(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sq_norms_of(per_sample_grads(module, a, b), a.shape[0], b)


def _chunk_size(module: nn.Module, backprop: torch.Tensor, method: str, chunk_bytes: int) -> int:
    """Samples per chunk so that one chunk's temporaries stay below ``chunk_bytes``."""
    per_sample_bytes = _work_bytes_per_sample(module, backprop, method) * backprop.element_size()
    return max(1, min(backprop.shape[0], chunk_bytes // max(per_sample_bytes, 1)))


def per_sample_sq_norms(
    module: nn.Module, activation: torch.Tensor, backprop: torch.Tensor, *, chunk_bytes: int, method: str | None = None
) -> torch.Tensor:
    """Squared norms ``[B]`` of each sample's gradient with respect to ``module``'s own parameters.

    Parameters
    ----------
    activation, backprop : torch.Tensor
        The layer's input and the gradient of the summed per-sample loss at its output
        (``[B, ...]``); sample i's gradient depends on row i only.
    chunk_bytes : int
        Work memory bound: samples are processed in chunks whose temporaries stay below it.
    method : str, optional
        Force ``"ghost"`` or ``"per_sample"`` (default: the cheaper, see :func:`norm_method`).
    """
    n = activation.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=backprop.dtype, device=backprop.device)
    method = method or norm_method(module, backprop)
    fn = _ghost_sq_norms if method == GHOST else _per_sample_sq_norms
    step = _chunk_size(module, backprop, method, chunk_bytes)
    parts: Sequence[torch.Tensor] = [
        fn(module, activation[i : i + step], backprop[i : i + step]) for i in range(0, n, step)
    ]
    return torch.cat(list(parts))


def per_sample_grads_chunked(
    module: nn.Module, activation: torch.Tensor, backprop: torch.Tensor, *, chunk_bytes: int
) -> dict[nn.Parameter, torch.Tensor]:
    """:func:`per_sample_grads` in chunks of samples (temporaries below ``chunk_bytes``), written in place."""
    n = activation.shape[0]
    step = _chunk_size(module, backprop, PER_SAMPLE, chunk_bytes)
    if step >= n:  # one chunk: no copy
        return per_sample_grads(module, activation, backprop)
    out = {p: torch.empty((n, *p.shape), dtype=p.dtype, device=p.device) for p in _trainable(module)}
    for i in range(0, n, step):
        for p, g in per_sample_grads(module, activation[i : i + step], backprop[i : i + step]).items():
            out[p][i : i + step] = g
    return out
