"""One site's round update as the coordinator receives it, computed by privmed's own training code.

The audit does not re-implement DP-SGD: the update comes from :func:`client.train.dp_train`
(Opacus Poisson sampling, per-sample clipping to C, Gaussian noise σ·C, the configured
``grad_sample_mode``) or, for the undefended control, :func:`client.train.plain_train`.
The batch is the attacked images only, for one step: the worst case for the site, since no
other patient's gradient hides them (with B patients a real step scales signal and noise
alike by 1/B).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from client.train import dp_train, plain_train
from common.data.patients import Patient, PatientDataset
from common.models import exchanged_state
from common.privacy import SiteAccountant


def one_step_training(training: DictConfig, batch: int) -> DictConfig:
    """``training`` changed to one local step over exactly ``batch`` patients."""
    cfg = OmegaConf.to_container(training, resolve=True)
    cfg.update(batch_size=batch, max_physical_batch_size=batch, local_epochs=1)
    return OmegaConf.create(cfg)


def observed_update(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    task: str,
    training: DictConfig,
    noise_multiplier: float | None,
    max_grad_norm: float,
    accountant: str,
    delta: float,
    class_weights: list[float] | None = None,
) -> OrderedDict[str, torch.Tensor]:
    """The gradient direction the coordinator reads off one site's update: ``w_before − w_after``.

    ``noise_multiplier=None`` is the undefended control (``privacy=none``: no clipping, no noise).
    The update is returned for the exchanged (trained) tensors only, as it travels.
    """
    before = exchanged_state(model)
    local = copy.deepcopy(model)
    dataset = PatientDataset([Patient(f"target-{i}", images[i : i + 1], targets[i : i + 1]) for i in range(len(images))])
    step = one_step_training(training, len(images))
    device = torch.device("cpu")
    if noise_multiplier is None:
        result = plain_train(local, dataset, task=task, training=step, device=device, class_weights=class_weights)
    else:
        # A fresh ledger: this simulated step is the audit's, not a release of the site's budget.
        ledger = SiteAccountant(site="audit", mechanism=accountant, delta=delta)
        result = dp_train(
            local,
            dataset,
            task=task,
            training=step,
            ledger=ledger,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            budget=math.inf,
            device=device,
            class_weights=class_weights,
        )
    return OrderedDict((k, before[k] - result.state[k]) for k in before if before[k].is_floating_point())
