"""Gradient inversion (Geiping et al. 2020, "Inverting Gradients"): images from a model update.

A curious coordinator holds one site's round update Δ = w_after − w_before of a known model.
After one local SGD step, −Δ is the learning rate times the batch's gradient (DP-SGD: clipped,
summed and noised), so the coordinator looks for images whose gradient points the same way:

1. Start from the population's mean image (the attacker knows what chest X-rays look like).
2. Minimise 1 − cos(∇θ L(x̂, y), −Δ) + λ · TV(x̂) over x̂, summed over the trained tensors,
   with Adam on the signed gradient and a step-decayed learning rate, as in the paper.
3. Return x̂. Labels are given to the attacker (worst case; for one image they can be read
   off the sign of the head's bias gradient anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class InversionSettings:
    """The attack's knobs (``conf/audit/inversion.yaml``)."""

    iterations: int
    learning_rate: float
    tv_weight: float
    # Iteration fractions at which the learning rate is divided by 10 (the paper: 3/8, 5/8, 7/8).
    decay_at: tuple[float, ...] = (0.375, 0.625, 0.875)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV)."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def invert_gradient(
    model: nn.Module,
    observed: dict[str, torch.Tensor],
    *,
    targets: torch.Tensor,
    start: torch.Tensor,
    loss_fn: LossFn,
    settings: InversionSettings,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Reconstruct the images behind ``observed`` (parameter name → observed gradient direction).

    Parameters
    ----------
    model : nn.Module
        The model as the site received it; only the parameters named in ``observed`` are matched.
    targets : torch.Tensor
        The batch's labels (or masks), given to the attacker.
    start : torch.Tensor
        ``[B, C, H, W]`` initial guess (the population mean image, repeated).
    loss_fn : callable
        Per-sample loss ``(outputs, targets) -> [B]``, the site's training loss.
    """
    named = dict(model.named_parameters())
    missing = sorted(set(observed) - set(named))
    if missing:
        raise ValueError(f"observed update names parameters the model lacks: {missing[:3]}")
    params = [named[k] for k in observed]
    goal = [observed[k].detach() for k in observed]
    goal_norm = torch.sqrt(sum((g * g).sum() for g in goal)).clamp_min(1e-12)
    x = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=settings.learning_rate)
    milestones = [int(f * settings.iterations) for f in settings.decay_at]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    model.eval()
    for step in range(settings.iterations):
        optimizer.zero_grad(set_to_none=True)
        # The batch's summed per-sample loss: DP-SGD clips and sums per sample, plain SGD means;
        # the cosine is blind to the scale either way.
        loss = loss_fn(model(x), targets).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * t).sum() for g, t in zip(grads, goal))
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
        objective = 1 - dot / (norm * goal_norm) + settings.tv_weight * total_variation(x)
        (grad_x,) = torch.autograd.grad(objective, x)
        x.grad = grad_x.sign()  # signed gradients, as in the paper
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step)
    return x.detach()
