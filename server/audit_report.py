"""What ``privmed-audit`` prints and logs: the results table, the image grid and the MLflow run."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow.entities import Metric, RunStatus  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from common.audit.inversion_audit import InversionReport  # noqa: E402
from common.audit.membership_audit import MembershipResult  # noqa: E402
from common.run_config import tracking_uri  # noqa: E402
from server.mlflow_sink import PRIVACY_TAG, flatten  # noqa: E402


def inversion_metrics(report: InversionReport) -> dict[str, float]:
    """The contract's names for the first case (all weights, batch 1), ``inversion.<trainable>_b<batch>.*`` for all."""
    metrics = {"inversion.chance": report.chance, "inversion.prior.psnr": report.prior_psnr,
               "inversion.noise_multiplier": report.noise_multiplier}
    first = (report.cases[0].trainable, report.cases[0].batch) if report.cases else None
    for c in report.cases:
        for name, value in (("reid", c.reid), ("psnr", c.psnr), ("ssim", c.ssim)):
            metrics[f"inversion.{c.trainable}_b{c.batch}.{c.setting}.{name}"] = value
            if (c.trainable, c.batch) == first:
                metrics[f"inversion.{c.setting}.{name}"] = value
    return metrics


def membership_metrics(results: list[MembershipResult]) -> dict[str, float]:
    """``membership.<setting>.{eps_lower, auc, auc_gradient, auc_rounds, guesses, correct}`` and ``.dp.eps_claimed``."""
    metrics: dict[str, float] = {}
    for r in results:
        prefix = f"membership.{r.setting}"
        metrics.update({f"{prefix}.eps_lower": r.bound.eps_lower, f"{prefix}.auc": r.auc_loss,
                        f"{prefix}.auc_gradient": r.auc_gradient, f"{prefix}.auc_rounds": r.auc_rounds,
                        f"{prefix}.guesses": r.bound.guesses,
                        f"{prefix}.correct": r.bound.correct, f"{prefix}.canaries_included": r.included})
        if not math.isinf(r.eps_claimed):
            metrics[f"{prefix}.eps_claimed"] = r.eps_claimed
    return metrics


def inversion_table(report: InversionReport) -> str:
    """One line per case and setting, then chance and prior."""
    lines = [f"{'trained':>8} {'batch':>5} {'setting':>7} {'re-id':>6} {'PSNR dB':>8} {'SSIM':>6}"]
    for c in report.cases:
        lines.append(f"{c.trainable:>8} {c.batch:>5} {c.setting:>7} {c.reid:6.3f} {c.psnr:8.2f} {c.ssim:6.3f}")
    lines.append(f"chance {report.chance:.4f} (pool of {round(1 / report.chance)}); mean image (prior) PSNR "
                 f"{report.prior_psnr:.2f} dB; dp: σ={report.noise_multiplier:.3f}, C={report.max_grad_norm:g}")
    return "\n".join(lines)


def membership_table(results: list[MembershipResult]) -> str:
    """One line per setting."""
    lines = [f"{'setting':>7} {'ε lower':>8} {'ε claimed':>9} {'AUC loss':>8} {'AUC grad':>8} {'AUC rnds':>8} {'guesses':>8} {'correct':>7}"]
    for r in results:
        lines.append(f"{r.setting:>7} {r.bound.eps_lower:8.3f} {r.eps_claimed:9.3f} {r.auc_loss:8.3f} "
                     f"{r.auc_gradient:8.3f} {r.auc_rounds:8.3f} {r.bound.guesses:8d} {r.bound.correct:7d}")
    if results:
        r = results[0]
        lines.append(f"m={r.canaries} canaries; 95% confidence split over {r.bound.tests} tests (Bonferroni); "
                     f"per-round score on the {r.rounds_source}")
    return "\n".join(lines)


def inversion_grid(report: InversionReport, path: Path) -> Path:
    """Targets, then each case's reconstructions per setting, one row per target."""
    columns = [("target", report.targets), ("mean image", report.prior.expand_as(report.targets))]
    columns += [(f"{c.setting}\n{c.trainable}, batch {c.batch}", c.reconstructions) for c in report.cases]
    rows = len(report.targets)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.3 * len(columns), 1.3 * rows), squeeze=False)
    for j, (title, images) in enumerate(columns):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(images[i, 0].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_audit(cfg: DictConfig, metrics: dict[str, float], *, table: str, figures: list[Path]) -> tuple[str, str]:
    """One MLflow run in ``cfg.mlflow.experiment_name``: config as params, metrics, table, figures.

    Returns (run id, tracking URI). ``MLFLOW_TRACKING_URI`` wins over the config.
    """
    uri = tracking_uri(cfg.mlflow)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.mlflow.experiment_name)
    tags = {PRIVACY_TAG: "dp" if cfg.privacy.get("enabled", True) else "none", "privmed.audit": str(cfg.audit.name)}
    run_id = client.create_run(experiment_id, run_name=cfg.mlflow.run_name, tags=tags).info.run_id
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    for chunk in range(0, len(params), 100):
        client.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in list(params.items())[chunk:chunk + 100]])
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "audit.txt").write_text(table + "\n")
        client.log_artifact(run_id, str(Path(tmp) / "audit.txt"), "audit")
    for path in figures:
        client.log_artifact(run_id, str(path), "audit")
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config/resolved_config.yaml")
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id, uri
