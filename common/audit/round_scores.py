"""White-box membership score over every round of a federation (the audit's strongest score).

Each round t the audited site receives the global model θ_t and (under ``aggregation=plain``)
the coordinator receives the site's own update Δ_t. Training moves the weights against an
included canary's gradient, so the score of canary c is

    Σ_t  −⟨Δ_t, r_t(c)⟩ / ‖r_t(c)‖,  standardised per round,

where r_t(c) is the gradient of c's loss at θ_t with the top ``components`` principal directions
of all canaries' gradients removed. Why the projection: canary gradients share a few common
directions (the "push the logit up/down" direction that every patient's gradient also has), and
the thousand other patients' contribution along those directions swamps one canary; what is
left is what tells this canary apart. The directions come from the canaries only (public to the
auditor), never from the site's data.

Gradients of all weights are compared through a fixed random count sketch (``sketch_dim``
coordinates; inner products are kept up to ~1/√sketch_dim of the norms), so 100 canaries of an
11 M-weight ResNet fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from common.losses import task_loss


class CountSketch:
    """A fixed random linear map of a flat vector of ``size`` to ``dim`` coordinates (seeded)."""

    def __init__(self, size: int, dim: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.dim = min(dim, size)
        if self.dim == size:  # small models: the identity, exact
            self.index, self.sign = None, None
        else:
            self.index = torch.randint(0, self.dim, (size,), generator=gen)
            self.sign = torch.randint(0, 2, (size,), generator=gen).float() * 2 - 1

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return flat.float()
        return torch.zeros(self.dim).index_add_(0, self.index, flat.float() * self.sign)


def canary_gradients(
    model: nn.Module, keys: list[str], images: torch.Tensor, labels: torch.Tensor, *, task: str, sketch: CountSketch
) -> torch.Tensor:
    """Sketched loss gradient ``[m, dim]`` of each canary at ``model`` w.r.t. the parameters ``keys``."""
    model.eval()
    named = dict(model.named_parameters())
    params = [named[k] for k in keys]
    rows = []
    for x, y in zip(images, labels):
        grads = torch.autograd.grad(task_loss(task, model(x[None]), y[None]).sum(), params)
        rows.append(sketch(torch.cat([g.reshape(-1) for g in grads])))
    return torch.stack(rows)


def residual_alignment(grads: torch.Tensor, update: torch.Tensor, *, components: int) -> np.ndarray:
    """−⟨update, r(c)⟩/‖r(c)‖ per canary, r(c): its centred gradient without the top principal directions.

    Raises
    ------
    ValueError
        If ``components`` is negative or not below the number of canaries.
    """
    m = grads.shape[0]
    if not 0 <= components < m - 1:
        raise ValueError(f"audit.components must be in [0, {m - 2}] for {m} canaries, got {components}")
    centred = (grads - grads.mean(0)).double()
    residual = centred
    if components:
        # The principal directions of the canaries' gradients, from their m x m Gram matrix.
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        top = vh[:components]
        residual = centred - (centred @ top.T) @ top
    norms = residual.norm(dim=1).clamp_min(1e-24)
    return (-(residual @ update.double()) / norms).numpy()


def standardised(scores: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: each round weighs the same in the sum over rounds."""
    spread = float(np.std(scores))
    return (scores - scores.mean()) / (spread if spread > 0 else 1.0)


def flat_update(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], keys: Iterable[str]) -> torch.Tensor:
    """``after − before`` over ``keys``, flattened in order."""
    return torch.cat([(after[k].float() - before[k].float()).reshape(-1) for k in keys])
