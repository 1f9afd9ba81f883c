"""Utility table: non-private vs ε = 8 vs ε = 3, seeded vs pretrained initialisation.

For each configuration (the default task and both clinical presets, shrunk for a CPU: the
settings are in ``CONFIGS`` and printed with the table), one federation per privacy level and
initialisation, each a real ``privmed-simulate`` run. The pretrained initialisation is a
checkpoint pretrained here with ``privacy=none`` on every weight, on synthetic patients of other
seeds than the sites' (``PRETRAIN_SEEDS``: disjoint patients), as a stand-in for ImageNet or a
public chest X-ray / CT set (nothing can be downloaded); the runs then use
``model.init=runs:/<pretraining run>/model``. The metric is the task's (AUC or mean Dice) of the
global model on the sites' test sets after the last round, read from MLflow.

    python bench/utility_table.py                         # all configurations
    python bench/utility_table.py --configs default --out outputs/utility
    python bench/utility_table.py --configs xray_224,ct_256 --json utility.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Two of the three hospitals: each simulated site is a process holding a model; a shared machine
# with little free memory runs two more reliably than three.
SITES = ("hospital_a", "hospital_b")
# SecAgg+ needs three sites; plain aggregation sums the same updates.
_DROP = ["~federation.sites.hospital_c", "aggregation=plain"]
# Synthetic patients of the pretraining federation: other seeds than the sites' (101, 102).
PRETRAIN_SEEDS = {"hospital_a": 901, "hospital_b": 902}
PRIVACY = {"none": ["privacy=none"], "eps8": ["privacy.target_epsilon=8"], "eps3": ["privacy.target_epsilon=3"]}


def _sites(num_train: int, num_test: int) -> list[str]:
    return _DROP + [f"federation.sites.{s}.data.{k}={v}" for s in SITES for k, v in (("num_train", num_train), ("num_test", num_test))]


# Non-private pretraining: batches of 32, several local epochs. The default task pretrains its own
# trained part (norm + head: a warm start that converges in a CPU budget); the presets every weight.
_PRETRAIN = ["training.batch_size=32", "training.max_physical_batch_size=32", "training.local_epochs=3"]
# Each configuration as its runs use it, shrunk for a shared 2-core CPU (stated in the README),
# and the extra overrides of its pretraining run.
CONFIGS: dict[str, dict[str, list[str]]] = {
    "default": {
        "run": ["federation.num_rounds=2", "training.batch_size=50", *_sites(150, 100)],
        "pretrain": [*_PRETRAIN, "training.optimizer.lr=0.1", "federation.num_rounds=1"],
    },
    # The presets' model, trained part, learning rate and physical batch, at 32 px: a CPU shared by
    # several jobs cannot run 18 federations at 224/256 px (their round time: bench/preset_round.py).
    "xray_224": {
        "run": ["experiment=xray_224", "task.image_size=32", "federation.num_rounds=2", "training.batch_size=32",
                *_sites(64, 64)],
        "pretrain": [*_PRETRAIN, "training.optimizer.lr=0.05"],
    },
    "ct_256": {
        "run": ["experiment=ct_256", "task.image_size=32", "federation.num_rounds=2", "training.batch_size=32",
                *_sites(64, 32)],
        "pretrain": [*_PRETRAIN, "training.optimizer.lr=0.05", "training.max_physical_batch_size=16"],
    },
}


@dataclass
class Row:
    config: str
    init: str
    privacy: str
    metric: str
    value: float
    eps: float | None
    run_id: str
    minutes: float


def _simulate(overrides: list[str], out: Path, log: Path) -> tuple[str, str, float, float]:
    """Run ``privmed-simulate``; return (run id, metric name, final value, minutes)."""
    cmd = [str(Path(sys.executable).parent / "privmed-simulate"), *overrides,
           f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}", "simulation.show_progress=false",
           # A site lost to a shared machine's memory pressure fails the run in bounded time.
           "simulation.round_timeout_s=900",
           f"hydra.run.dir={out / 'runs' / log.stem}"]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.write_text(" ".join(cmd) + "\n\n" + proc.stdout + proc.stderr)
    found = re.search(r"MLflow run (\w+) in .*: final (\w+)=([-\d.naninf]+)", proc.stdout)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"privmed-simulate failed (exit {proc.returncode}); see {log}")
    return found[1], found[2], float(found[3]), (time.time() - start) / 60


def _eps(out: Path, run_id: str) -> float | None:
    from mlflow.tracking import MlflowClient

    metrics = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").get_run(run_id).data.metrics
    return metrics.get("eps_sample_max")


def run_config(name: str, out: Path, console, jobs: int = 1) -> list[Row]:
    """The pretraining run and the six runs of one configuration, ``jobs`` federations at a time.

    The seeded runs do not need the pretrained checkpoint, so they run beside the pretraining.
    """
    from concurrent.futures import ThreadPoolExecutor

    cfg = CONFIGS[name]
    seeds = [f"federation.sites.{s}.data.seed={v}" for s, v in PRETRAIN_SEEDS.items()]

    def one(init: str, privacy: str, args: list[str]) -> Row:
        console.print(f"{name}: {init}, {privacy}: started")
        run_id, metric, value, minutes = _simulate(args, out, out / f"{name}-{init}-{privacy}.log")
        console.print(f"{name}: {init}, {privacy}: {metric}={value:.3f} ({minutes:.1f} min)")
        return Row(name, init, privacy, metric, value, None if privacy == "none" else _eps(out, run_id), run_id, minutes)

    # Create the MLflow store before parallel runs: two processes creating one sqlite store race.
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").search_experiments()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        # Pretraining on patients of other seeds (disjoint from the sites'), non-private.
        pre = pool.submit(one, "pretraining", "none", ["privacy=none", *cfg["run"], *cfg["pretrain"], *seeds])
        seeded = [pool.submit(one, "seeded", p, [*cfg["run"], *a]) for p, a in PRIVACY.items()]
        pre_row = pre.result()
        init = [f"model.init=runs:/{pre_row.run_id}/model"]
        pretrained = [pool.submit(one, "pretrained", p, [*cfg["run"], *init, *a]) for p, a in PRIVACY.items()]
        return [pre_row, *(f.result() for f in seeded), *(f.result() for f in pretrained)]


def main(argv: list[str] | None = None) -> list[Row]:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--out", type=Path, default=Path("outputs/utility"), help="MLflow store and run logs")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here (appended per configuration)")
    parser.add_argument("--jobs", type=int, default=1, help="federations run at a time (each is a few processes)")
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; valid: {', '.join(CONFIGS)}")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    rows: list[Row] = []
    for name in names:
        rows += run_config(name, args.out, console, args.jobs)
        if args.json is not None:  # after each configuration: a long run keeps what it finished
            args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    table = Table(title="Utility: final metric of the global model on the sites' test sets")
    for col in ("config", "init", "privacy", "metric", "value", "vs non-private", "ε (max site)", "minutes"):
        table.add_column(col)
    for r in rows:
        ref = next((x.value for x in rows if (x.config, x.init, x.privacy) == (r.config, r.init, "none")), None)
        rel = f"{r.value / ref:.0%}" if ref and r.init != "pretraining" else ""
        table.add_row(r.config, r.init, r.privacy, r.metric, f"{r.value:.3f}", rel,
                      "" if r.eps is None else f"{r.eps:.2f}", f"{r.minutes:.1f}")
    Console(width=140).print(table)
    for name in names:
        console.print(f"{name}: {' '.join(CONFIGS[name]['run'])}")
    return rows


if __name__ == "__main__":
    main()
