"""Round wall time and bytes sent per site: SecAgg+ vs plain aggregation, ResNet-18, in one run.

Each configuration is a real Flower simulation (ResNet-18, norm+head exchanged, sample-level
DP-SGD at every site, DP-FedAvg with clipping at the coordinator or, under SecAgg+, at the sites).
Round time is the mean gap between consecutive rounds' MLflow logs (start-up excluded); bytes are
everything a site puts in its replies (arrays, keys, encrypted shares), counted by a client mod.

    python bench/secagg_round.py [--sites 3 5] [--rounds 3] [--num-train 200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from flwr.app import Context, Message
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from common.run_config import compose_config
from server.simulate import simulate

BYTES_LOG = "PRIVMED_BENCH_BYTES_LOG"


def count_reply_bytes(msg: Message, ctxt: Context, call_next) -> Message:
    """Client mod: append the size of every reply's payload to the file named by $PRIVMED_BENCH_BYTES_LOG."""
    reply = call_next(msg, ctxt)
    if reply.has_content():
        size = sum(len(array.data) for record in reply.content.array_records.values() for array in record.values())
        for record in reply.content.config_records.values():
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                size += sum(len(v) for v in items if isinstance(v, bytes))
        with open(os.environ[BYTES_LOG], "a") as handle:
            handle.write(json.dumps({"node": int(ctxt.node_config["partition-id"]), "bytes": size}) + "\n")
    return reply


def run_case(*, sites: int, aggregation: str, rounds: int, num_train: int, workdir: Path) -> dict[str, float]:
    """Simulate one configuration and return its mean round time and bytes per site per round."""
    log_path = workdir / f"bytes-{aggregation}-{sites}.jsonl"
    os.environ[BYTES_LOG] = str(log_path)
    cfg = compose_config(
        [
            f"state_root={workdir / f'state-{aggregation}-{sites}'}",
            f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
            "federation=many_sites",
            f"federation.generated_sites.count={sites}",
            f"federation.generated_sites.template.data.num_train={num_train}",
            "federation.generated_sites.template.data.num_test=40",
            f"federation.num_rounds={rounds}",
            "strategy=dp_fedavg",
            "strategy.client_dp.max_epsilon=1000",
            "strategy.client_dp.clipping_norm=2.5",
            f"aggregation={aggregation}",
            "simulation.show_progress=false",
            "device=cpu",
        ]
    )
    report = simulate(cfg, client_outer_mods=[count_reply_bytes])
    history = MlflowClient(report.tracking_uri).get_metric_history(report.run_id, "sites_aggregated")
    stamps = sorted(m.timestamp for m in history)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    sizes = [json.loads(line)["bytes"] for line in log_path.read_text().splitlines()]
    return {
        "round_s": sum(gaps) / len(gaps) / 1000.0,
        # Train and evaluate replies of every round (and every SecAgg+ stage), per site and round.
        "bytes_per_site_round": sum(sizes) / sites / rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=200)
    args = parser.parse_args()
    table = Table(title="SecAgg+ vs plain aggregation (ResNet-18 norm+head, DP-FedAvg), same run")
    for column in ("sites", "plain round [s]", "SecAgg+ round [s]", "time ratio", "plain kB/site/round",
                   "SecAgg+ kB/site/round", "bytes ratio"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow's sqlite artifacts go to ./mlruns
        for sites in args.sites:
            plain, secure = (
                run_case(sites=sites, aggregation=a, rounds=args.rounds, num_train=args.num_train, workdir=Path(tmp))
                for a in ("plain", "secaggplus")
            )
            table.add_row(
                str(sites),
                f"{plain['round_s']:.2f}",
                f"{secure['round_s']:.2f}",
                f"{secure['round_s'] / plain['round_s']:.2f}×",
                f"{plain['bytes_per_site_round'] / 1e3:.1f}",
                f"{secure['bytes_per_site_round'] / 1e3:.1f}",
                f"{secure['bytes_per_site_round'] / plain['bytes_per_site_round']:.2f}×",
            )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
