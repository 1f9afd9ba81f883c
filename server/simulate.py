"""``privmed-simulate``: a federated DP simulation of the configured hospitals (Hydra app).

Examples
--------
privmed-simulate                                   # 3 hospitals, ResNet-18, sample-level DP
privmed-simulate task=segmentation                 # UNet on CT-like slices
privmed-simulate experiment=many_sites             # 200 sites, client-level DP-FedAvg
privmed-simulate aggregation=secaggplus strategy=dp_fedavg   # SecAgg+: the coordinator sees only sums
privmed-simulate -m privacy.noise_multiplier=0.8,1.0,1.2   # one MLflow child run each
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Sequence

import hydra
import torch
from flwr.clientapp.typing import Mod
from flwr.simulation import run_simulation
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from client.client_app import build_client_app
from common.federation_config import ConfigError, check_non_private_allowed, site_names, site_views, validate_config
from common.run_config import CONF_DIR
from server.resume import config_for_resume
from server.server_app import FederationReport, build_server_app, resume_point

log = logging.getLogger("privmed")
# Exit statuses (README "Failures and exit status"); 0: every planned round completed.
EXIT_STOPPED_EARLY = 1
EXIT_INVALID_CONFIG = 2


def backend_config(cfg: DictConfig, num_sites: int) -> dict:
    """Ray resources: CPUs per simulated site, a GPU share when CUDA is used, and where Ray runs.

    With ``simulation.ray_address`` set, the simulation attaches to that running Ray cluster
    (``ray start --head`` plus workers) instead of starting a private one on this machine.
    """
    gpus = cfg.simulation.num_gpus_per_site
    address = cfg.simulation.get("ray_address")
    if gpus == "auto":
        # Ray hides GPUs from actors that reserve none, so CUDA needs a share. On a cluster the
        # driver cannot see the workers' GPUs: there "auto" means none; set a share explicitly.
        local_cuda = address is None and cfg.device != "cpu" and torch.cuda.is_available()
        gpus = 1.0 / min(num_sites, 4) if local_cuda else 0.0
    # Ray refuses resource sizes (and dashboard settings) when it joins a running cluster: the
    # cluster's own `ray start` declared them.
    init_args: dict = {"address": str(address)} if address is not None else {
        "num_cpus": os.cpu_count() or 1, "include_dashboard": False
    }
    return {
        "client_resources": {"num_cpus": float(cfg.simulation.num_cpus_per_site), "num_gpus": float(gpus)},
        "init_args": init_args,
    }


def simulate(
    cfg: DictConfig,
    *,
    sweep: str | None = None,
    client_mods: Sequence[Mod] = (),
    client_outer_mods: Sequence[Mod] = (),
    resume_as_recorded: bool = False,
) -> FederationReport:
    """Run one simulated federation for a composed config and return its report.

    ``client_mods`` / ``client_outer_mods`` are extra Flower mods inside / outside SecAgg+
    masking at every site (see :func:`client.client_app.build_client_app`). With
    ``cfg.resume`` set, the run continues from its last completed round with its recorded
    config (``resume_as_recorded``: the command gave nothing but ``resume``) or with ``cfg``,
    which must equal it; either way the sites keep the run's ``state_root`` and ``data_root``.

    Raises
    ------
    ConfigError
        If the config cannot run (checked before anything starts).
    RuntimeError
        If the federation failed.
    """
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    OmegaConf.set_readonly(resolved, True)
    if resolved.get("resume"):
        resolved = config_for_resume(resolved, as_recorded=resume_as_recorded)
        resume_point(resolved)  # a finished or complete run is refused before Ray starts
    validate_config(resolved)
    # Each site refuses privacy=none on real files it has not allowed; in a simulation the
    # operator holds every site's files, so say so before anything starts.
    for view in site_views(resolved).values():
        check_non_private_allowed(view)
    sites = site_names(resolved)
    reports: list[FederationReport] = []
    run_simulation(
        server_app=build_server_app(lambda _ctx: resolved, sweep=sweep, on_finish=reports.append),
        client_app=build_client_app(lambda _ctx: resolved, mods=client_mods, outer_mods=client_outer_mods),
        num_supernodes=len(sites),
        backend_config=backend_config(resolved, len(sites)),
    )
    if not reports:
        raise RuntimeError("the federation did not finish; the Flower log above names the failure")
    return reports[0]


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the final task metric (for sweeps)."""
    # Flower logs through its own handler; without this Hydra's root handler prints every line twice.
    logging.getLogger("flwr").propagate = False
    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None
    # `privmed-simulate resume=<id>` alone continues the run with the config it recorded.
    as_recorded = all(o.startswith("resume=") for o in hydra_cfg.overrides.task)
    try:
        report = simulate(cfg, sweep=sweep, resume_as_recorded=as_recorded)
    except ConfigError as err:
        print(f"privmed-simulate: invalid configuration: {err}", file=sys.stderr)
        sys.exit(EXIT_INVALID_CONFIG)
    final = report.rows[-1].get(report.metric, math.nan) if report.rows else math.nan
    print(f"MLflow run {report.run_id} in {report.tracking_uri}: final {report.metric}={final:.3f}")
    status = exit_status(report)
    if status != 0:
        print(f"privmed-simulate: the federation stopped early: {report.stop_reason}", file=sys.stderr)
        # A multirun keeps going: one stopped job must not end the sweep's other jobs.
        if sweep is None:
            sys.exit(status)
    return float(final)


def exit_status(report: FederationReport) -> int:
    """0 when every planned round completed (sites may have dropped), else ``EXIT_STOPPED_EARLY``."""
    completed = report.stop_reason is None and len(report.rows) >= report.planned_rounds
    return 0 if completed else EXIT_STOPPED_EARLY


if __name__ == "__main__":
    main()
