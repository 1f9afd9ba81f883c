"""``privmed-audit audit=membership``: one-run ε lower bound (Steinke, Nasr & Jagielski, NeurIPS 2023).

For each setting (``none``: ``privacy=none``; ``dp``: the configured privacy), the audit:

1. writes the federation's data, then plants m canary patients at the audited site, each
   included in its training folder with probability 1/2 (:mod:`common.audit.canaries`);
2. runs the whole federation (every round, every site, the real Flower simulation);
3. scores each canary with the final global model against the initial one (both known to
   every site): the drop of its loss (black box on the two models) and the alignment of the
   model's change with the canary's gradient (white box); and, round by round, the alignment
   of what the coordinator saw of the audited site (its own update under ``aggregation=plain``,
   else the change of the global model) with the canary's gradient at that round's global model
   (:mod:`common.audit.round_scores`, recorded by :mod:`common.audit.round_capture`);
4. guesses "in" for the highest and "out" for the lowest scores and turns the correct guesses
   into an ε lower bound at the configured confidence (:mod:`common.audit.one_run_bound`,
   Bonferroni over both scores and every guess size tried), and reports the membership AUC.

``dp``'s bound must stay below the site's claimed ε (its ledger after the run); ``none``'s
shows that the audit can see leakage at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score

from common.audit.canaries import Canaries, plant_canaries
from common.audit.one_run_bound import AuditBound, best_eps_lower_bound
from common.audit.round_capture import recorded_rounds, round_recorder
from common.audit.round_scores import CountSketch, canary_gradients, flat_update, residual_alignment, standardised
from common.data.synthesize import ensure_synthetic
from common.federation_config import site_names, site_view
from common.losses import task_loss
from common.models import exchanged_state, initial_model, load_exchanged
from common.privacy import SiteAccountant

SETTINGS = ("none", "dp")
# A federation runner: the composed config in, an object with ``final_state`` out (privmed-simulate's).
RunFederation = Callable[..., Any]


@dataclass(frozen=True)
class MembershipResult:
    """One setting's audit: the bound, the AUC of each score and the claimed ε."""

    setting: str
    bound: AuditBound
    auc_loss: float
    auc_gradient: float
    auc_rounds: float
    rounds_source: str
    eps_claimed: float
    canaries: int
    included: int


def setting_config(cfg: DictConfig, setting: str, workdir: Path) -> DictConfig:
    """The audited config for ``setting``, with its own state, data and MLflow run name, resolved."""
    overrides: dict = {
        "state_root": str(workdir / "state"),
        "data_root": str(workdir / "data"),
        "mlflow": {"run_name": f"audit-membership-{setting}-federation", "log_model": False},
        # Both settings: the same trained part and the same audited site size (the same attack).
        "model": {"trainable": cfg.audit.trainable},
    }
    if cfg.audit.get("site_num_train") is not None:
        overrides["federation"] = {"sites": {cfg.audit.site: {"data": {"num_train": int(cfg.audit.site_num_train)}}}}
    if setting == "none":
        overrides["privacy"] = {"enabled": False}
        # The positive control must train: without clipping, the DP-tuned step size diverges.
        overrides["training"] = OmegaConf.to_container(cfg.audit.get("none_training") or {})
    merged = OmegaConf.merge(cfg, overrides)
    resolved = OmegaConf.create(OmegaConf.to_container(merged, resolve=True))
    OmegaConf.set_readonly(resolved, True)
    return resolved


def canary_scores(
    initial: torch.nn.Module, final: torch.nn.Module, canaries: Canaries, *, task: str
) -> tuple[np.ndarray, np.ndarray]:
    """(loss drop, gradient alignment) per canary; larger means "looks included"."""
    initial.eval()
    final.eval()
    change = {k: final_v - initial_v for (k, final_v), initial_v in
              zip(exchanged_state(final).items(), exchanged_state(initial).values()) if final_v.is_floating_point()}
    named = dict(initial.named_parameters())
    params = [named[k] for k in change]
    drops, aligns = [], []
    for x, y in zip(canaries.images, canaries.labels):
        x, y = x[None], y[None]
        with torch.no_grad():
            drop = task_loss(task, initial(x), y) - task_loss(task, final(x), y)
        grads = torch.autograd.grad(task_loss(task, initial(x), y).sum(), params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
        # Training moves the weights against an included canary's gradient.
        aligns.append(float(-sum((g * change[k]).sum() for g, k in zip(grads, change)) / norm))
        drops.append(float(drop))
    return np.asarray(drops), np.asarray(aligns)


def round_scores(
    cfg: DictConfig, canaries: Canaries, rounds: list[dict], final_state: dict, *, components: int, sketch_dim: int
) -> tuple[np.ndarray, str]:
    """The per-round white-box score of every canary, and what it was computed on.

    ``site update`` when every round's reply of the audited site was recorded in the clear
    (``aggregation=plain``: the coordinator sees it), else ``global change`` (θ_{t+1} − θ_t,
    seen by every site and the coordinator under any aggregation).

    Raises
    ------
    ValueError
        If no round was recorded.
    """
    if not rounds:
        raise ValueError("no training round of the audited site was recorded; the per-round score needs them")
    own = all(r["sent"] is not None for r in rounds) and cfg.aggregation.name == "plain"
    model = initial_model(cfg.model, int(cfg.seed))
    keys = [k for k, p in model.named_parameters() if p.requires_grad]
    sketch = CountSketch(sum(p.numel() for k, p in model.named_parameters() if p.requires_grad), sketch_dim, int(cfg.seed))
    total = np.zeros(len(canaries.included))
    for t, record in enumerate(rounds):
        after = record["sent"] if own else (rounds[t + 1]["global"] if t + 1 < len(rounds) else final_state)
        load_exchanged(model, record["global"])
        grads = canary_gradients(model, keys, canaries.images, canaries.labels, task=cfg.task.name, sketch=sketch)
        update = sketch(flat_update(record["global"], after, keys))
        total += standardised(residual_alignment(grads, update, components=components))
    return total, "site update" if own else "global change"


def _claimed_epsilon(cfg: DictConfig, site: str, setting: str) -> float:
    """The site's ε after the run, from its own ledger (inf without DP)."""
    if setting == "none":
        return math.inf
    view = site_view(cfg, site)
    p = view.privacy
    ledger = SiteAccountant.restore(site=site, mechanism=p.accountant, delta=p.delta, state_dir=view.state_dir)
    return ledger.epsilon()


def audit_setting(cfg: DictConfig, setting: str, *, workdir: Path, run_federation: RunFederation) -> MembershipResult:
    """Plant canaries, run the federation of ``setting`` and bound its ε (steps 1-4 above).

    Raises
    ------
    ValueError
        If the audited site does not write its data as files (canaries are planted as files),
        or the federation returned no final model.
    """
    audit = cfg.audit
    scfg = setting_config(cfg, setting, workdir / setting)
    view = site_view(scfg, audit.site)
    if view.data.format != "kermany" or scfg.task.name != "classification":
        raise ValueError("audit=membership plants canaries as Kermany JPEG files: it needs task=classification "
                         f"and data.format=kermany at site {audit.site}, got {scfg.task.name}/{view.data.format}")
    root = Path(view.data.root)
    if view.data.get("synthesize"):
        ensure_synthetic(root, task=scfg.task, data=view.data)
    canaries = plant_canaries(
        root,
        workdir / setting / "canaries",
        count=int(audit.canaries),
        classes=list(view.data.classes),
        file_size=int(scfg.task.synthetic.file_size),
        image_size=int(scfg.task.image_size),
        window=view.data.get("window"),
        jpeg_quality=int(scfg.task.synthetic.jpeg_quality),
        seed=int(scfg.seed) * 31 + SETTINGS.index(setting),
    )
    recorded = workdir / setting / "rounds"
    site_index = site_names(scfg).index(audit.site)
    report = run_federation(scfg, client_outer_mods=[round_recorder(site_index, recorded)])
    # A bound from a federation that stopped early would audit a model that never saw the canaries.
    if getattr(report, "stop_reason", None) or getattr(report, "final_state", None) is None:
        raise ValueError(f"the {setting} federation did not run to its end ({getattr(report, 'stop_reason', None)}); "
                         "the audit needs the whole run")
    initial = initial_model(scfg.model, int(scfg.seed))
    final = initial_model(scfg.model, int(scfg.seed))
    load_exchanged(final, report.final_state)
    drops, aligns = canary_scores(initial, final, canaries, task=scfg.task.name)
    per_round, source = round_scores(scfg, canaries, recorded_rounds(recorded), report.final_state,
                                     components=int(audit.components), sketch_dim=int(audit.sketch_dim))
    bound = best_eps_lower_bound(
        [drops, aligns, per_round],
        canaries.included,
        guess_fractions=list(audit.guess_fractions),
        delta=float(view.privacy.delta),
        confidence=float(audit.confidence),
    )
    return MembershipResult(
        setting=setting,
        bound=bound,
        auc_loss=float(roc_auc_score(canaries.included, drops)),
        auc_gradient=float(roc_auc_score(canaries.included, aligns)),
        auc_rounds=float(roc_auc_score(canaries.included, per_round)),
        rounds_source=source,
        eps_claimed=_claimed_epsilon(scfg, audit.site, setting),
        canaries=len(canaries.included),
        included=int(canaries.included.sum()),
    )


def run_membership_audit(cfg: DictConfig, *, workdir: Path, run_federation: RunFederation) -> list[MembershipResult]:
    """Every configured setting's audit, in order.

    Raises
    ------
    ValueError
        If a setting is unknown.
    """
    unknown = sorted(set(cfg.audit.settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"audit.settings {unknown} unknown; valid: {list(SETTINGS)}")
    return [audit_setting(cfg, s, workdir=workdir, run_federation=run_federation) for s in cfg.audit.settings]
