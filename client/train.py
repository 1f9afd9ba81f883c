"""Local training of one site for one federated round (pure torch + Opacus): DP-SGD, and its
non-private reference for ``privacy=none``.

Read top to bottom: build the Poisson-sampled private loader, check the budget, train
with per-sample clipping and noise, hand the accountant's history back to the ledger.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from client.private_training import make_private
from common.losses import task_loss
from common.models.exchange import exchanged_state
from common.privacy import SiteAccountant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalTrainResult:
    """What one round of local training produced (``state``: the exchanged weights only)."""

    state: OrderedDict[str, torch.Tensor]
    num_examples: int
    mean_loss: float
    steps: int
    epsilon: float


def dp_train(
    model: nn.Module,
    dataset: Dataset,
    *,
    task: str,
    training: DictConfig,
    ledger: SiteAccountant,
    noise_multiplier: float,
    max_grad_norm: float,
    budget: float,
    device: torch.device,
    class_weights: list[float] | None = None,
    show_progress: bool = False,
) -> LocalTrainResult:
    """Train ``model`` on ``dataset`` with DP-SGD for ``training.local_epochs`` epochs.

    Parameters
    ----------
    training : DictConfig
        ``batch_size`` (expected logical batch), ``max_physical_batch_size``,
        ``local_epochs``, ``optimizer`` (a ``_partial_`` torch optimizer), ``grad_sample_mode``
        and ``grad_sample_chunk_mib`` (:mod:`client.private_training`). Only the parameters of
        ``model`` that require grad are trained.
    ledger : SiteAccountant
        The site's ledger; every optimizer step of this round is appended to it.
    noise_multiplier, max_grad_norm : float
        σ and the per-sample clipping norm C.
    budget : float
        The site's ε budget; the round is refused before any step if it would exceed it.
    class_weights : list of float, optional
        Fixed cross-entropy class weights (segmentation).

    Raises
    ------
    PrivacyBudgetExceeded
        If the planned steps would exceed ``budget``; nothing is trained or accounted.
    """
    # 1. A plain loader; Opacus turns it into Poisson sampling with q = batch/N.
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=True)
    model = model.to(device).train()
    optimizer = instantiate(training.optimizer)(params=[p for p in model.parameters() if p.requires_grad])

    # 2. Refuse before touching the data if this round would break the budget (Opacus samples
    #    with q = 1 / len(loader) and takes len(loader) steps per epoch).
    sample_rate = 1.0 / len(loader)
    steps = training.local_epochs * len(loader)
    ledger.check_budget(budget=budget, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)

    # 3. The engine's accountant starts from the site's whole history, not from zero.
    engine = PrivacyEngine(accountant=ledger.mechanism)
    engine.accountant = ledger.opacus_accountant()
    private = make_private(
        engine,
        model=model,
        optimizer=optimizer,
        loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        mode=training.grad_sample_mode,
        chunk_mib=training.grad_sample_chunk_mib,
    )
    private_opt = private.optimizer

    # 4. DP-SGD; physical batches bound memory, logical (Poisson) batches set privacy.
    losses: list[float] = []
    bar = tqdm(total=steps, desc=f"{ledger.site} DP-SGD", disable=not show_progress, leave=False)
    for _ in range(training.local_epochs):
        with BatchMemoryManager(
            data_loader=private.loader,
            max_physical_batch_size=training.max_physical_batch_size,
            optimizer=private_opt,
        ) as batches:
            for images, targets in batches:
                images, targets = images.to(device), targets.to(device)
                private_opt.zero_grad(set_to_none=True)
                # The per-sample loss [B]: every mode clips each sample's gradient separately.
                loss = task_loss(task, private.model(images), targets, class_weights=class_weights)
                private.backward(loss)
                private_opt.step()
                if not private_opt._is_last_step_skipped:
                    bar.update(1)
                if len(targets):
                    losses.append(float(loss.detach().mean()))
    bar.close()
    private.close()

    # 5. Every step was accounted by the engine's hook; the ledger takes the history.
    ledger.absorb(engine.accountant)
    return LocalTrainResult(
        state=exchanged_state(private.model),
        num_examples=len(dataset),
        mean_loss=float(sum(losses) / max(len(losses), 1)),
        steps=steps,
        epsilon=ledger.epsilon(),
    )


def plain_train(
    model: nn.Module,
    dataset: Dataset,
    *,
    task: str,
    training: DictConfig,
    device: torch.device,
    class_weights: list[float] | None = None,
    show_progress: bool = False,
    site: str = "",
) -> LocalTrainResult:
    """The non-private reference (``privacy=none``): :func:`dp_train` without Opacus.

    Same optimizer, epochs and number of steps (``⌈N / batch_size⌉`` per epoch), shuffled batches
    of ``training.batch_size`` patients instead of Poisson ones, the mean gradient without
    clipping or noise, physical micro-batches of ``max_physical_batch_size``. ``epsilon`` is inf.
    """
    # 1. Shuffled batches: each epoch sees every patient once, as DP-SGD does in expectation.
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=True)
    model = model.to(device).train()
    optimizer = instantiate(training.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
    steps = training.local_epochs * len(loader)
    losses: list[float] = []
    bar = tqdm(total=steps, desc=f"{site} non-private", disable=not show_progress, leave=False)
    for _ in range(training.local_epochs):
        for images, targets in loader:
            # 2. The batch's mean gradient, accumulated over physical micro-batches.
            optimizer.zero_grad(set_to_none=True)
            for chunk in range(0, len(targets), training.max_physical_batch_size):
                part = slice(chunk, chunk + training.max_physical_batch_size)
                x, y = images[part].to(device), targets[part].to(device)
                loss = task_loss(task, model(x), y, class_weights=class_weights)
                (loss.sum() / len(targets)).backward()
                losses.append(float(loss.detach().mean()))
            optimizer.step()
            bar.update(1)
    bar.close()
    return LocalTrainResult(
        state=exchanged_state(model),
        num_examples=len(dataset),
        mean_loss=float(sum(losses) / max(len(losses), 1)),
        steps=steps,
        epsilon=float("inf"),
    )
