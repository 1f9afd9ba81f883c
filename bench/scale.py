"""Seconds per round and per site-message of a large simulated federation (small model, plain FedAvg).

Every site is a generated many_sites site (in-memory synthetic patients, sample-level DP-SGD
with its own ledger) training ``model=small_cnn`` and evaluating the global model each round.
Round time is the mean gap between consecutive rounds' MLflow logs, so start-up (Ray, the first
build of each site's data) is excluded; a site-message is one train or one evaluate exchange.

    python bench/scale.py --sites 100 300 1000 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from common.run_config import compose_config
from server.simulate import simulate


def scale_overrides(*, sites: int, rounds: int, workdir: Path) -> list[str]:
    """The benchmark's federation: ``sites`` small sites, small CNN, plain FedAvg, DP-SGD at each site."""
    return [
        f"state_root={workdir / f'state-{sites}'}",
        f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "federation=many_sites",
        f"federation.generated_sites.count={sites}",
        # Small sites: per-message overhead, not local training, is what this measures.
        "federation.generated_sites.template.data.num_train=20",
        "federation.generated_sites.template.data.num_test=10",
        f"federation.num_rounds={max(rounds, 2)}",
        "strategy=fedavg",
        "aggregation=plain",
        "model=small_cnn",
        "task.image_size=16",
        "training.batch_size=10",
        "training.max_physical_batch_size=10",
        "simulation.show_progress=false",
        "device=cpu",
    ]


def run_case(*, sites: int, rounds: int, workdir: Path) -> dict[str, float]:
    """Simulate one federation size; return seconds per round and milliseconds per site-message."""
    started = time.perf_counter()
    report = simulate(compose_config(scale_overrides(sites=sites, rounds=rounds, workdir=workdir)))
    total = time.perf_counter() - started
    history = MlflowClient(report.tracking_uri).get_metric_history(report.run_id, "sites_trained")
    if len(history) < 2:
        raise RuntimeError(f"{sites} sites: {len(history)} round(s) logged, need 2 (stop: {report.stop_reason})")
    stamps = sorted(m.timestamp for m in history)
    round_s = (stamps[-1] - stamps[0]) / (len(stamps) - 1) / 1000.0
    trained = min(m.value for m in history)
    # One train and one evaluate message per site and round.
    return {"sites": sites, "round_s": round_s, "site_ms": 1000.0 * round_s / (2 * sites),
            "sites_trained_min": trained, "total_s": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--rounds", type=int, default=2, help="rounds per federation (≥ 2: round 1 is start-up)")
    parser.add_argument("--json", type=Path, help="write one object per federation size to this file")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # MLflow's sqlite artifacts go to ./mlruns
        try:
            for sites in args.sites:
                print(f"bench/scale.py: {sites} sites, {max(args.rounds, 2)} rounds ...", file=sys.stderr, flush=True)
                results.append(run_case(sites=sites, rounds=args.rounds, workdir=Path(tmp)))
                print(f"bench/scale.py: {sites} sites: {results[-1]['round_s']:.1f} s/round", file=sys.stderr, flush=True)
        finally:
            os.chdir(cwd)
    table = Table(title="Round time of a simulated federation (small CNN, plain FedAvg, DP-SGD per site)")
    for column in ("sites", "s/round", "ms/site-message", "sites trained (min)", "total s"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(str(r["sites"]), f"{r['round_s']:.1f}", f"{r['site_ms']:.1f}", f"{r['sites_trained_min']:.0f}",
                      f"{r['total_s']:.0f}")
    Console(width=120).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps([{k: r[k] for k in ("sites", "round_s", "site_ms")} for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
