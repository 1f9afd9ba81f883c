"""``privmed-audit audit=inversion``: can a curious coordinator rebuild a patient's image from a site's update?

For each case (trained parameter set × batch size) and each setting (``none``: no clipping, no
noise; ``dp``: the site's configured σ and C), the audit:

1. takes the audited site's first ``pool`` training patients (one image each) as the pool,
   the first ``targets`` of them as the attacked images;
2. computes the site's one-step update on each batch of targets through privmed's own training
   code (:mod:`common.audit.site_update`), starting from the federation's initial model;
3. inverts it (:mod:`common.audit.gradient_inversion`) from the population's mean image
   (the mean of the site's held-out test images: what any radiologist's average looks like);
4. scores every reconstruction: re-identified (closer to its own target than to every other
   pool image), PSNR and SSIM against the target; the mean image's PSNR is the prior.

Everything stays in this process: nothing computed here leaves the site unless the hospital
logs it (``privmed-audit`` logs to the MLflow server it is pointed at).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from client.site_runtime import SiteRuntime
from common.audit.gradient_inversion import InversionSettings, invert_gradient
from common.audit.image_metrics import psnr, reidentified, ssim, standardise
from common.audit.site_update import observed_update
from common.losses import task_loss
from common.models import initial_model
from common.privacy import SiteAccountant

log = logging.getLogger(__name__)

SETTINGS = ("none", "dp")


@dataclass
class CaseResult:
    """One (trainable set, batch size, setting): per-target scores and the reconstructions."""

    trainable: str
    batch: int
    setting: str
    reid: float
    psnr: float
    ssim: float
    reconstructions: torch.Tensor


@dataclass
class InversionReport:
    """All cases, the pool's chance level, the prior's PSNR and what was attacked."""

    cases: list[CaseResult] = field(default_factory=list)
    chance: float = math.nan
    prior_psnr: float = math.nan
    noise_multiplier: float = math.nan
    max_grad_norm: float = math.nan
    targets: torch.Tensor | None = None
    prior: torch.Tensor | None = None

    def case(self, trainable: str, batch: int, setting: str) -> CaseResult | None:
        """The result of one case, if it was run."""
        return next((c for c in self.cases if (c.trainable, c.batch, c.setting) == (trainable, batch, setting)), None)


def _pool(runtime: SiteRuntime, size: int, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One image per training patient (segmentation: the patient's middle slice) and its target."""
    patients = runtime.data.train.patients
    if len(patients) < size:
        raise ValueError(f"audit.pool={size} needs that many training patients; site {runtime.site} has {len(patients)}")
    pick = [len(p.images) // 2 if task == "segmentation" else 0 for p in patients[:size]]
    images = torch.stack([p.images[k] for p, k in zip(patients[:size], pick)])
    targets = torch.stack([p.targets[k] for p, k in zip(patients[:size], pick)])
    return images, targets


def _site_sigma(runtime: SiteRuntime, cfg: DictConfig) -> float:
    """σ the site would use in this federation (calibrated once for all planned rounds)."""
    p = runtime.view.privacy
    ledger = SiteAccountant(site=runtime.site, mechanism=p.accountant, delta=p.delta)
    return runtime.noise_multiplier(ledger, planned_rounds=int(cfg.federation.num_rounds))


def _matched(reconstructions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reorder a batch's reconstructions to their closest targets (the attacker's batch order is arbitrary)."""
    cost = torch.cdist(standardise(reconstructions).flatten(1), standardise(targets).flatten(1))
    rows, cols = linear_sum_assignment(cost.numpy())
    out = torch.empty_like(reconstructions)
    out[torch.as_tensor(cols)] = reconstructions[torch.as_tensor(rows)]
    return out


def run_inversion_audit(cfg: DictConfig, *, progress: bool = True) -> InversionReport:
    """Run every configured case of the inversion audit on ``cfg.audit.site``.

    Raises
    ------
    ValueError
        If the audit settings do not fit (pool < 100 or smaller than the targets, unknown setting,
        batch sizes that do not divide the targets).
    """
    audit = cfg.audit
    if audit.pool < 100:
        raise ValueError(f"audit.pool must be >= 100 (re-identification among at least 100 patients), got {audit.pool}")
    if not 1 <= audit.targets <= audit.pool:
        raise ValueError(f"audit.targets must be in [1, audit.pool], got {audit.targets}")
    unknown = sorted(set(audit.settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"audit.settings {unknown} unknown; valid: {list(SETTINGS)}")
    cases = [(str(c.trainable), int(c.batch)) for c in audit.cases]
    for trainable, batch in cases:
        if batch < 1 or audit.targets % batch:
            raise ValueError(f"audit.cases: batch {batch} must divide audit.targets={audit.targets}")
        if trainable not in ("all", "default"):
            raise ValueError(f"audit.cases: trainable must be 'all' or 'default' (model.trainable), got {trainable!r}")
    task = cfg.task.name
    runtime = SiteRuntime(cfg, audit.site)
    pool, labels = _pool(runtime, int(audit.pool), task)
    targets = pool[: audit.targets]
    # The attacker's prior: the population mean, from held-out images, never the targets.
    prior = runtime.data.test.tensors[0].mean(0, keepdim=True)
    report = InversionReport(
        chance=1.0 / len(pool),
        prior_psnr=float(psnr(prior.expand_as(targets), targets).mean()),
        noise_multiplier=_site_sigma(runtime, cfg),
        max_grad_norm=float(runtime.view.privacy.max_grad_norm),
        targets=targets,
        prior=prior,
    )
    settings = InversionSettings(
        iterations=int(audit.iterations), learning_rate=float(audit.learning_rate), tv_weight=float(audit.tv_weight)
    )
    total = len(cases) * len(audit.settings) * int(audit.targets) * settings.iterations
    bar = tqdm(total=total, desc="gradient inversion", disable=not progress, unit="it")
    p = runtime.view.privacy

    def loss_fn(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(task, outputs, y, class_weights=runtime.class_weights)

    for trainable, batch in cases:
        model_cfg = OmegaConf.merge(cfg.model, {"trainable": "all"} if trainable == "all" else {})
        model = initial_model(model_cfg, int(cfg.seed))
        for setting in audit.settings:
            recs = []
            for start in range(0, len(targets), batch):
                part = slice(start, start + batch)
                # Reproducible audit: the DP noise of each attacked step is seeded.
                torch.manual_seed(int(cfg.seed) * 7919 + start)
                observed = observed_update(
                    model,
                    targets[part],
                    labels[part],
                    task=task,
                    training=runtime.view.training,
                    noise_multiplier=None if setting == "none" else report.noise_multiplier,
                    max_grad_norm=report.max_grad_norm,
                    accountant=p.accountant,
                    delta=p.delta,
                    class_weights=runtime.class_weights,
                )
                step: Callable[[int], None] = lambda _i, n=batch: bar.update(n)
                rec = invert_gradient(
                    model,
                    observed,
                    targets=labels[part],
                    start=prior.expand(len(targets[part]), -1, -1, -1),
                    loss_fn=loss_fn,
                    settings=settings,
                    progress=step,
                )
                recs.append(_matched(rec, targets[part]) if batch > 1 else rec)
            rec = torch.cat(recs)
            report.cases.append(
                CaseResult(
                    trainable=trainable,
                    batch=batch,
                    setting=setting,
                    reid=float(reidentified(rec, pool, torch.arange(len(targets))).float().mean()),
                    psnr=float(psnr(rec, targets).mean()),
                    ssim=float(ssim(rec, targets).mean()),
                    reconstructions=rec,
                )
            )
            c = report.cases[-1]
            log.info("inversion %s batch %d %s: re-id %.3f, PSNR %.2f dB, SSIM %.3f (chance %.4f, prior %.2f dB)",
                     trainable, batch, setting, c.reid, c.psnr, c.ssim, report.chance, report.prior_psnr)
    bar.close()
    return report

