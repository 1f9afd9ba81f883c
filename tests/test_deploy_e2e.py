"""A real deployment on 127.0.0.1: SuperLink + three SuperNodes + MLflow server, as separate processes.

What the README's "Deploying across hospitals" tells admins to do, run for real: certificates
from ``deploy/gen-certs.sh``, a SuperLink with TLS, SuperNode authentication and a sqlite state
file, hospitals registered with ``flwr supernode register``, SuperNodes choosing their site (one
with its own site file), ``flwr run`` submitting a 2-round run that logs to an MLflow tracking
server over HTTP; then an unregistered key is refused and a restarted SuperLink keeps its state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY_SITES
from deploy_harness import Processes, free_port, port_open
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # flwr, flower-superlink, ... of this environment
SITES = ["hospital_a", "hospital_b", "hospital_c"]
CONNECTION = "privmed-test"
# Tiny and fast: two rounds of a small CNN on 64 images per site, under SecAgg+ with client-level DP
# (the deployment the design card describes: the coordinator only ever sees noised sums).
OVERRIDES = [
    "aggregation=secaggplus", "strategy=dp_fedavg", "federation.num_rounds=2", "training.batch_size=16", "training.max_physical_batch_size=16",
    "simulation.show_progress=false", "simulation.round_timeout_s=120", "device=cpu", "model=small_cnn", *TINY_SITES,
]
# hospital_a's own site file makes its budget stricter than what the coordinator submits (ε = 8).
HOSPITAL_A_EPSILON = 3.0


def _flwr(env: dict[str, str], *args: str, timeout: float = 60) -> dict:
    """Run a `flwr` CLI command with JSON output and return the parsed answer."""
    result = subprocess.run(
        [str(BIN / "flwr"), *args, "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    out = result.stdout
    try:
        answer = json.loads(out[out.index("{") :])
    except ValueError:
        answer = {}
    assert result.returncode == 0 and answer.get("success"), f"flwr {' '.join(args)} failed:\n{out}\n{result.stderr}"
    return answer


def _superlink_cmd(certs: Path, port: int, database: Path) -> list[str]:
    return [
        str(BIN / "flower-superlink"),
        "--ssl-ca-certfile", str(certs / "ca.crt"),
        "--ssl-certfile", str(certs / "superlink.crt"),
        "--ssl-keyfile", str(certs / "superlink.key"),
        "--enable-supernode-auth",
        "--database", str(database),
        "--host", "127.0.0.1", "--port", str(port),
        # The app's dependencies are installed (pinned) already; never fetch any at run time.
        "--disable-runtime-dependency-installation",
    ]


def _supernode_cmd(certs: Path, superlink_port: int, key: Path, node_config: str) -> list[str]:
    return [
        str(BIN / "flower-supernode"),
        "--superlink", f"127.0.0.1:{superlink_port}",
        "--root-certificates", str(certs / "ca.crt"),
        "--auth-supernode-private-key", str(key),
        "--node-config", node_config,
        "--host", "127.0.0.1", "--port", str(free_port()),
    ]


def _mlflow_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_tls_authenticated_federation_runs_logs_to_mlflow_and_refuses_unknown_nodes(tmp_path):
    certs, flwr_home, logs = tmp_path / "certs", tmp_path / "flwr-home", tmp_path / "logs"
    flwr_home.mkdir()
    logs.mkdir()
    # 1. Certificates and node keys, exactly as the coordinator admin makes them.
    subprocess.run(
        ["bash", str(REPO / "deploy" / "gen-certs.sh"), "-o", str(certs), "127.0.0.1", *SITES, "rogue"],
        check=True, capture_output=True, timeout=60,
    )
    superlink_port, mlflow_port = free_port(), free_port()
    # The `flwr` CLI reads its SuperLink connections from $FLWR_HOME/config.toml.
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{superlink_port}"\nroot-certificates = "{certs / "ca.crt"}"\n'
    )
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "LANG": "C.UTF-8",
    }
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    site_a = tmp_path / "hospital_a.yaml"
    site_a.write_text(f"name: hospital_a\nprivacy:\n  target_epsilon: {HOSPITAL_A_EPSILON}\n")

    with Processes(logs, env) as procs:
        # 2. Tracking server and SuperLink (TLS, node auth, state in sqlite).
        mlflow = procs.start("mlflow", [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination", str(tmp_path / "mlartifacts"),
        ], cwd=tmp_path)
        superlink_cmd = _superlink_cmd(certs, superlink_port, tmp_path / "superlink.db")
        # The ServerApp runs in a SuperLink subprocess and inherits MLFLOW_TRACKING_URI.
        superlink = procs.start("superlink", superlink_cmd, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": tracking_uri})
        procs.wait_for("superlink", lambda: port_open(superlink_port), timeout=60, needs=(superlink,))

        # 3. Register the three hospitals' public keys, then start their SuperNodes.
        for site in SITES:
            _flwr(env, "supernode", "register", str(certs / site / "node_key.pub"), CONNECTION, "--name", site)
        nodes = []
        for site in SITES:
            config = f'site="{site}" state-root="{tmp_path / "state" / site}"'
            if site == "hospital_a":
                config += f' site-config="{site_a}"'
            nodes.append(procs.start(site, _supernode_cmd(certs, superlink_port, certs / site / "node_key", config)))

        def online() -> bool:
            listed = _flwr(env, "supernode", "ls", CONNECTION)["nodes"]
            return sum(n["status"] == "online" for n in listed) == len(SITES)

        procs.wait_for("three online SuperNodes", online, timeout=60, needs=(superlink, *nodes), interval=2)

        procs.wait_for("mlflow", lambda: _mlflow_healthy(mlflow_port), timeout=90, needs=(mlflow,))

        # 4. Submit a 2-round run with Hydra overrides and wait until it finishes.
        run_config = f'overrides="{" ".join(OVERRIDES)}"'
        run_id = int(_flwr(env, "run", ".", CONNECTION, "--run-config", run_config, timeout=120)["run-id"])

        def status() -> str:
            return _flwr(env, "ls", CONNECTION, "--run-id", str(run_id))["runs"][0]["status"]

        # Each `flwr ls` costs a CPU-second: poll gently while the sites train.
        procs.wait_for(f"run {run_id} to finish", lambda: status().startswith("finished"), timeout=300,
                       needs=(superlink, mlflow, *nodes), interval=5)
        assert status() == "finished:completed", procs.tails()

        # 5. The tracking server holds the run, its per-round metrics and ε.
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name("privmed")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        assert [s for s, _ in _history(client, run.info.run_id, "auc")] == [1, 2]
        assert _history(client, run.info.run_id, "sites_aggregated") == [(1, 3.0), (2, 3.0)]
        assert run.data.metrics["eps_client"] > 0
        assert run.data.metrics["eps_sample_max"] > 0
        # hospital_a's own file set its budget; the others kept the coordinator's.
        eps = {s: _history(client, run.info.run_id, f"site.{s}.eps_sample")[-1][1] for s in SITES}
        assert eps["hospital_a"] <= HOSPITAL_A_EPSILON + 1e-6 < eps["hospital_b"], eps
        assert run.data.params["model._target_"].endswith("build_small_cnn")
        assert (tmp_path / "state" / "hospital_b" / "hospital_b").is_dir()

        # 6. A SuperNode whose key was never registered is refused and exits.
        # (A log file, not a pipe: the SuperNode's detached SuperExec child would hold a pipe open.)
        rogue = procs.start("rogue", _supernode_cmd(certs, superlink_port, certs / "rogue" / "node_key", 'site="hospital_a"'))
        procs.wait_for("the unregistered SuperNode to exit", lambda: rogue.proc.poll() is not None, timeout=60)
        assert rogue.proc.returncode != 0, procs.tails()
        assert "Failed to activate SuperNode" in rogue.log.read_text(), procs.tails()
        assert len(_flwr(env, "supernode", "ls", CONNECTION)["nodes"]) == len(SITES)

        # 7. A restarted SuperLink keeps its registered nodes and runs (sqlite state file).
        procs.stop(superlink)
        restarted = procs.start("superlink-restarted", superlink_cmd, cwd=tmp_path)
        procs.wait_for("restarted superlink", lambda: port_open(superlink_port), timeout=60, needs=(restarted,))
        assert status() == "finished:completed"
        assert len(_flwr(env, "supernode", "ls", CONNECTION)["nodes"]) == len(SITES)
