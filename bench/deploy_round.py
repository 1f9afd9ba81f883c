"""Seconds per round: the same federation through ``privmed-simulate`` and through a local deployment.

Both runs use one config (SecAgg+ with DP-FedAvg, ResNet-18 norm+head at 32 px, synthetic
Kermany-layout JPEG files: ~``--images`` at hospital_a, half that at the others) and the same
files on disk. The deployment is real processes on 127.0.0.1, as the README's "Deploying across
hospitals" tells admins: certificates from ``deploy/gen-certs.sh`` in a temporary directory, a
SuperLink with TLS, SuperNode authentication and a sqlite state file, three registered
SuperNodes, ``flwr run``. Round time is the mean gap between consecutive rounds' MLflow logs
(start-up excluded, as in ``bench/scale.py`` and ``bench/secagg_round.py``). Where a round's time
goes comes from the sites' stage timers (``client/timing.py``): ClientApp process start-up
(interpreter, imports), config, data read+decode (or the site's cache), model build, DP-SGD,
evaluation, and each message's handling by SecAgg+ stage.

    nice -n 5 python bench/deploy_round.py [--sites 3] [--rounds 2] [--images 500] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.table import Table

from client.timing import TIMING_LOG_ENV

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the deployment test's process harness: one way to start and stop them
from deploy_harness import Processes, free_port, port_open  # noqa: E402

BIN = Path(sys.executable).parent  # flwr, flower-superlink, privmed-simulate of this environment
CONNECTION = "privmed-bench"
SITES = ["hospital_a", "hospital_b", "hospital_c"]
METRIC = "sites_aggregated"  # logged once per round


def bench_overrides(*, sites: int, rounds: int, images: int, threads: int, workdir: Path) -> list[str]:
    """The one config both runs use (the issue's: SecAgg+ + DP-FedAvg, ResNet-18 norm+head at 32 px)."""
    if not 2 <= sites <= len(SITES):
        raise ValueError(f"--sites must be 2..{len(SITES)} (the federation's hospitals), got {sites}")
    overrides = [
        "aggregation=secaggplus", "strategy=dp_fedavg", f"federation.num_rounds={rounds}", "model=resnet18",
        "task.image_size=32", "device=cpu", "simulation.show_progress=false", "mlflow.log_model=false",
        f"data_root={workdir / 'data'}", f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
    ]
    for i, site in enumerate(SITES):
        # ~2 images per patient (task.synthetic.images_per_patient: [1, 3]); 80 % of patients train.
        patients = max(10, (images if i == 0 else images // 2) // 2)
        overrides += [f"federation.sites.{site}.data.num_train={patients * 4 // 5}",
                      f"federation.sites.{site}.data.num_test={patients - patients * 4 // 5}"]
    if sites < len(SITES):
        overrides += [f"~federation.sites.{site}" for site in SITES[sites:]]
    if threads > 0:
        overrides.append(f"training.num_threads={threads}")
    return overrides


def round_seconds(tracking_uri: str, run_id: str) -> tuple[float, float, float]:
    """(mean seconds between consecutive rounds' logs, first log time, last log time) in seconds."""
    stamps = sorted(m.timestamp / 1000.0 for m in MlflowClient(tracking_uri).get_metric_history(run_id, METRIC))
    if len(stamps) < 2:
        raise RuntimeError(f"run {run_id} logged {len(stamps)} round(s); need at least 2")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1), stamps[0], stamps[-1]


def breakdown(timing_log: Path, start: float, end: float, *, sites: int, rounds: int) -> dict[str, float]:
    """Seconds per site and round of each timed stage between two rounds' logs.

    ``processes``: ClientApp processes started; ``busiest_site``: the most seconds one site spent
    starting processes and handling messages (its stages overlap nothing else of its own), so the
    round time minus it is spent waiting in Flower (polling, launching processes, transport).
    """
    totals: dict[str, float] = defaultdict(float)
    busy: dict[str, float] = defaultdict(float)
    lines = timing_log.read_text().splitlines() if timing_log.exists() else []
    for entry in map(json.loads, lines):
        if not start < entry["t"] <= end:
            continue
        stage = entry["stage"]
        if stage in ("startup", "message"):
            busy[entry["site"]] += entry["s"]
        if stage == "message":
            stage = f"message:{entry.get('secagg_stage') or entry.get('kind')}"
        if stage == "startup":
            totals["processes"] += 1
        totals[stage] += entry["s"]
    parts = {k: v / sites / rounds for k, v in sorted(totals.items())}
    parts["busiest_site"] = max(busy.values(), default=0.0) / rounds
    return parts


def latest_run(tracking_uri: str, after: float = 0.0) -> str | None:
    """The newest run of the privmed experiment started after ``after`` (seconds), if any."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("privmed")
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time DESC"]) if experiment else []
    return runs[0].info.run_id if runs and runs[0].info.start_time / 1000.0 > after else None


def run_simulation(overrides: list[str], workdir: Path) -> str:
    """``privmed-simulate`` with the bench config; returns its MLflow run id."""
    env = {**os.environ, TIMING_LOG_ENV: str(workdir / "sim-timing.jsonl")}
    cmd = [str(BIN / "privmed-simulate"), f"state_root={workdir / 'sim-state'}", f"hydra.run.dir={workdir / 'sim-out'}",
           *overrides]
    print("simulation:", " ".join(cmd[1:]), flush=True)
    started = time.time()
    with (workdir / "simulate.log").open("wb") as log:
        result = subprocess.run(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = (workdir / "simulate.log").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"privmed-simulate exited {result.returncode}:\n{tail}")
    run_id = latest_run(f"sqlite:///{workdir / 'mlflow.db'}", after=started)
    if run_id is None:
        raise RuntimeError("privmed-simulate finished without an MLflow run")
    return run_id


def _flwr(env: dict[str, str], *args: str) -> dict:
    result = subprocess.run([str(BIN / "flwr"), *args, "--format", "json"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    out = result.stdout
    answer = json.loads(out[out.index("{"):]) if "{" in out else {}
    if result.returncode != 0 or not answer.get("success"):
        raise RuntimeError(f"flwr {' '.join(args)} failed:\n{out}\n{result.stderr}")
    return answer


def run_deployment(overrides: list[str], workdir: Path, *, sites: int, timeout: float) -> str:
    """SuperLink + ``sites`` SuperNodes + ``flwr run`` on 127.0.0.1 (TLS, node auth); returns the MLflow run id."""
    names = SITES[:sites]
    certs, flwr_home, logs = workdir / "certs", workdir / "flwr-home", workdir / "logs"
    flwr_home.mkdir()
    logs.mkdir()
    subprocess.run(["bash", str(REPO / "deploy" / "gen-certs.sh"), "-o", str(certs), "127.0.0.1", *names],
                   check=True, capture_output=True, timeout=60)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(workdir), "FLWR_HOME": str(flwr_home),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "LANG": "C.UTF-8",
           TIMING_LOG_ENV: str(workdir / "deploy-timing.jsonl")}
    if "PYTHONPATH" in os.environ:  # e.g. timing another checkout of privmed with this environment
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with Processes(logs, env) as procs:
        superlink = procs.start("superlink", [
            str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "superlink.crt"), "--ssl-keyfile", str(certs / "superlink.key"),
            "--enable-supernode-auth", "--database", str(workdir / "superlink.db"),
            "--host", "127.0.0.1", "--port", str(port), "--disable-runtime-dependency-installation",
        ], cwd=workdir, env={"MLFLOW_TRACKING_URI": tracking_uri})
        procs.wait_for("superlink", lambda: port_open(port), timeout=60, needs=(superlink,))
        nodes = []
        for site in names:
            _flwr(env, "supernode", "register", str(certs / site / "node_key.pub"), CONNECTION, "--name", site)
            nodes.append(procs.start(site, [
                str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{port}",
                "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(certs / site / "node_key"),
                "--node-config", f'site="{site}" state-root="{workdir / "deploy-state"}"',
                "--host", "127.0.0.1", "--port", str(free_port()),
            ]))

        def online() -> bool:
            return sum(n["status"] == "online" for n in _flwr(env, "supernode", "ls", CONNECTION)["nodes"]) == sites

        procs.wait_for("online SuperNodes", online, timeout=120, needs=(superlink, *nodes), interval=2)
        started = time.time()
        print("deployment: flwr run with the same overrides", flush=True)
        _flwr(env, "run", str(REPO), CONNECTION, "--run-config", f'overrides="{" ".join(overrides)}"')

        def finished() -> bool:
            run_id = latest_run(tracking_uri, after=started)
            return run_id is not None and MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"

        procs.wait_for("the deployed run to finish", finished, timeout=timeout, needs=(superlink, *nodes), interval=3)
        return latest_run(tracking_uri, after=started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=500, help="images at hospital_a (half at the others)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 3),
                        help="training.num_threads at every site (0: leave torch's default)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the deployed run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be >= 2: a round's time is the gap between two rounds' logs")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="privmed-deploy-round-") as tmp:
        workdir = Path(tmp)
        overrides = bench_overrides(sites=args.sites, rounds=args.rounds, images=args.images, threads=args.threads,
                                    workdir=workdir)
        tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        sim_id = run_simulation(overrides, workdir)
        sim_round, sim_first, sim_last = round_seconds(tracking_uri, sim_id)
        deploy_id = run_deployment(overrides, workdir, sites=args.sites, timeout=args.timeout)
        deploy_round, dep_first, dep_last = round_seconds(tracking_uri, deploy_id)
        measured = args.rounds - 1
        sim_parts = breakdown(workdir / "sim-timing.jsonl", sim_first, sim_last, sites=args.sites, rounds=measured)
        deploy_parts = breakdown(workdir / "deploy-timing.jsonl", dep_first, dep_last, sites=args.sites, rounds=measured)
    result = {
        "sim_round_s": sim_round, "deploy_round_s": deploy_round, "ratio": deploy_round / sim_round,
        "sites": args.sites, "rounds": args.rounds, "images_hospital_a": args.images, "threads": args.threads,
        "load_avg_1min": [load_before, os.getloadavg()[0]],
        "sim_breakdown_s_per_site_round": sim_parts, "deploy_breakdown_s_per_site_round": deploy_parts,
    }
    table = Table(title=f"One round, same config: simulation {sim_round:.1f} s, deployment {deploy_round:.1f} s "
                        f"({result['ratio']:.2f}×); s per site per round")
    for column in ("stage", "simulation", "deployment"):
        table.add_column(column, justify="right")
    for stage in sorted(set(sim_parts) | set(deploy_parts)):
        table.add_row(stage, f"{sim_parts.get(stage, 0.0):.2f}", f"{deploy_parts.get(stage, 0.0):.2f}")
    table.add_row("waiting (round - busiest_site)", f"{sim_round - sim_parts['busiest_site']:.2f}",
                  f"{deploy_round - deploy_parts['busiest_site']:.2f}")
    Console(width=120).print(table)
    print(f"load average (1 min) before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
