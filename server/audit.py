"""``privmed-audit``: attacks that must fail under privmed's DP (Hydra app on the training job's config).

Examples
--------
privmed-audit audit=inversion                       # gradient inversion of one site's update
privmed-audit audit=inversion task=segmentation     # the same on the UNet
privmed-audit audit=membership                      # one-run ε lower bound from canaries

Runs where it is started: a hospital auditing its own data keeps every result on its machine
unless ``MLFLOW_TRACKING_URI`` (or ``mlflow.tracking_uri``) points elsewhere.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from common.audit.inversion_audit import run_inversion_audit
from common.audit.membership_audit import run_membership_audit
from common.federation_config import ConfigError
from common.run_config import CONF_DIR
from server.audit_report import (
    inversion_grid,
    inversion_metrics,
    inversion_table,
    log_audit,
    membership_metrics,
    membership_table,
)
from server.simulate import simulate


def run_audit(cfg: DictConfig, outdir: Path) -> dict[str, float]:
    """Run ``cfg.audit``, print its table, log it to MLflow and return its metrics."""
    started, cpu = time.time(), time.process_time()
    outdir.mkdir(parents=True, exist_ok=True)
    if cfg.audit.name == "inversion":
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        report = run_inversion_audit(resolved, progress=bool(cfg.simulation.show_progress))
        metrics, table = inversion_metrics(report), inversion_table(report)
        figures = [inversion_grid(report, outdir / f"inversion_grid_{cfg.task.name}.png")]
    elif cfg.audit.name == "membership":
        # Unresolved: each setting gets its own state and data roots, which the site roots follow.
        results = run_membership_audit(cfg, workdir=outdir / "membership", run_federation=simulate)
        metrics, table, figures = membership_metrics(results), membership_table(results), []
    else:
        raise ConfigError(f"audit={cfg.audit.name!r} is unknown; valid: inversion, membership")
    metrics[f"{cfg.audit.name}.seconds"] = time.time() - started
    # Wall time on a loaded machine says little; this process's CPU time (its Ray sites excluded).
    metrics[f"{cfg.audit.name}.cpu_seconds"] = time.process_time() - cpu
    run_id, uri = log_audit(cfg, metrics, table=table, figures=figures)
    print(table)
    print(f"MLflow run {run_id} in {uri} (experiment {cfg.mlflow.experiment_name})")
    return metrics


@hydra.main(config_path=str(CONF_DIR), config_name="privmed_audit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    logging.getLogger("flwr").propagate = False
    # Opacus announces every wrapped layer at INFO on each attacked step.
    logging.getLogger("opacus").setLevel(logging.WARNING)
    # One thread: the attack's many small double-backward passes run faster without OpenMP spinning.
    torch.set_num_threads(int(cfg.audit.get("threads", 1)))
    try:
        run_audit(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, ValueError) as err:
        print(f"privmed-audit: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
