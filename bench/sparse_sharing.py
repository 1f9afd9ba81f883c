"""Dice and bytes of FedAvg vs partial sharing vs SVT on the segmentation task (Li et al. 2019's table).

Runs one simulated federation per variant with the same small settings and prints, per variant,
the Dice after each round, the bytes each site sent per round and the SVT ε spent.

Example
-------
python bench/sparse_sharing.py --rounds 3 --num-train 100 --json sparse.json
python bench/sparse_sharing.py --variants fedavg,partial_10 --rounds 1     # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from common.run_config import compose_config
from server.simulate import simulate

# Variant name -> Hydra overrides.
VARIANTS = {
    "fedavg": ["strategy=fedavg"],
    "partial_10": ["strategy=partial_sharing", "strategy.fraction=0.1"],
    "partial_40": ["strategy=partial_sharing", "strategy.fraction=0.4"],
    "svt_1e5": ["strategy=svt", "strategy.fraction=0.1", "strategy.svt.epsilon=1e5", "strategy.svt.max_epsilon=1e9"],
    "svt_1e6": ["strategy=svt", "strategy.fraction=0.1", "strategy.svt.epsilon=1e6", "strategy.svt.max_epsilon=1e9"],
    "svt_1e7": ["strategy=svt", "strategy.fraction=0.1", "strategy.svt.epsilon=1e7", "strategy.svt.max_epsilon=1e9"],
}

# Reader overrides per layout: synthetic CT volumes written as an MSD task or as BraTS case folders
# (labels 0/2/4, mapped back to background/structure/lesion).
FORMATS = {
    "msd": ["task.data.format=msd"],
    "brats": ["task.data.format=brats", "~task.data.label_map", "+task.data.label_map={0:0,2:1,4:2}"],
}


def run_variant(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """One federation; returns its per-round Dice, bytes per site and SVT ε."""
    sites = [f"federation.sites.hospital_{s}.data.{k}={v}" for s in "abc" for k, v in
             (("num_train", args.num_train), ("num_test", args.num_test))]
    cfg = compose_config(
        [
            f"state_root={workdir / name / 'state'}",
            f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
            "task=segmentation",
            "aggregation=plain",  # sparse sharing runs on plain aggregation only (SecAgg+ is the default)
            *FORMATS[args.format],
            f"task.image_size={args.image_size}",
            f"federation.num_rounds={args.rounds}",
            f"training.batch_size={args.batch_size}",
            "training.max_physical_batch_size=25",
            "simulation.show_progress=false",
            f"device={args.device}",
            *sites,
            *VARIANTS[name],
        ]
    )
    start = time.time()
    report = simulate(cfg)
    client = MlflowClient(report.tracking_uri)

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(report.run_id, key), key=lambda m: m.step)]

    return {
        "variant": name,
        "overrides": VARIANTS[name],
        "dice": history("dice"),
        "bytes_per_site": history("bytes_per_site"),
        "eps_svt": history("eps_svt"),
        "eps_sample_max": history("eps_sample_max"),
        "stop_reason": report.stop_reason,
        "wall_s": time.time() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="fedavg,partial_10,partial_40,svt_1e5,svt_1e7",
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=100, help="training patients per site (3 sites)")
    parser.add_argument("--num-test", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--format", choices=sorted(FORMATS), default="brats", help="file layout of the synthetic data")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    torch.set_num_threads(2)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants.split(","):
            results.append(run_variant(name, args, Path(tmp)))
            if args.json:  # after every variant: a long run keeps what it measured
                args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))
    print(f"{'variant':<12} {'Dice per round':<28} {'kB/site/round':>14} {'ε_svt':>10}")
    for r in results:
        dice = " ".join(f"{d:.3f}" for d in r["dice"])
        kb = r["bytes_per_site"][-1] / 1e3 if r["bytes_per_site"] else math.nan
        eps = f"{r['eps_svt'][-1]:.3g}" if r["eps_svt"] else "-"
        print(f"{r['variant']:<12} {dice:<28} {kb:>14.1f} {eps:>10}")


if __name__ == "__main__":
    main()
