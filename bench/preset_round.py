"""Wall time of one federated round of the clinical presets (``experiment=xray_224``, ``ct_256``).

Each preset runs two rounds on two synthetic sites sharing this machine (a federation needs two;
a hospital training on its own machine alone would be faster), each shrunk to a given number of training
patients (the round's steps are ``⌈num_train / batch_size⌉`` logical batches of the
preset's size, so the time scales linearly with it); the round time is the gap between the
MLflow timestamps of the two rounds' metrics (start-up, data synthesis and the first round's
warm-up excluded). Training, federated evaluation on ``num_test`` patients and aggregation are
included.

    python bench/preset_round.py                      # both presets, CPU or the GPU torch sees
    python bench/preset_round.py --presets xray_224 --num-train 128 --json round.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from utility_table import _simulate  # noqa: E402  (bench scripts are not a package)

PRESETS = {"xray_224": "auc", "ct_256": "dice"}
# SecAgg+ needs three sites; plain aggregation (the same local training) runs with two.
TWO_SITES = ["~federation.sites.hospital_c", "aggregation=plain"]


def round_seconds(out: Path, run_id: str, metric: str) -> float:
    """Seconds between the last two rounds' ``metric`` in MLflow."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}").get_metric_history(run_id, metric)
    stamps = sorted(m.timestamp for m in history)
    if len(stamps) < 2:
        raise RuntimeError(f"run {run_id} logged {len(stamps)} rounds of {metric}; two are needed")
    return (stamps[-1] - stamps[-2]) / 1000


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--num-train", type=int, default=None, help="training patients per site (default: one logical batch)")
    parser.add_argument("--num-test", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("outputs/preset_round"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for preset in args.presets.split(","):
        if preset not in PRESETS:
            raise SystemExit(f"--presets: unknown {preset!r}; valid: {', '.join(PRESETS)}")
        from common.device import resolve_device
        from common.run_config import compose_config

        cfg = compose_config([f"experiment={preset}"])
        num_train = args.num_train or int(cfg.training.batch_size)
        run_id, metric, value, minutes = _simulate(
            [f"experiment={preset}", "federation.num_rounds=2", *TWO_SITES,
             *(f"federation.sites.{s}.data.{k}={v}" for s in ("hospital_a", "hospital_b")
               for k, v in (("num_train", num_train), ("num_test", args.num_test)))],
            out, out / f"{preset}.log",
        )
        seconds = round_seconds(out, run_id, PRESETS[preset])
        steps = -(-num_train // int(cfg.training.batch_size))
        results.append({"preset": preset, "device": resolve_device(cfg.device).type, "num_train": num_train, "num_test": args.num_test,
                        "steps_per_round": steps, "round_s": seconds, "run_minutes": minutes, "run_id": run_id})
        print(f"{preset}: one round ({steps} step(s) of {cfg.training.batch_size} patients per site, 2 sites, "
              f"{num_train} train / {args.num_test} test patients each) took {seconds:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
