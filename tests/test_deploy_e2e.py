"""A real deployment on 127.0.0.1: SuperLink + three SuperNodes + MLflow server, as separate processes.

What the README's "Deploying across hospitals" tells admins to do, run for real: certificates
from ``deploy/gen-certs.sh``, a SuperLink with TLS, SuperNode authentication and a sqlite state
file, hospitals registered with ``flwr supernode register``, SuperNodes choosing their site (one
with its own site file), ``flwr run`` submitting a 3-round run that logs to an MLflow tracking
server over HTTP. Real kills on the way: a SuperNode SIGKILLed while it trains (SecAgg+, then plain
aggregation) is restarted and rejoins with its ε continuing; the coordinator (SuperLink and
ServerApp) SIGKILLed mid-run is restarted on its state file and the run resumed in the same MLflow
run. An unregistered key is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY_SITES
from deploy_harness import Processes, Started, free_port, port_open
from mlflow.tracking import MlflowClient

from common.privacy.site_accountant import LEDGER_FILE

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # flwr, flower-superlink, ... of this environment
SITES = ["hospital_a", "hospital_b", "hospital_c"]
CONNECTION = "privmed-test"
# Tiny and fast: two rounds of a small CNN on 64 images per site, under SecAgg+ with client-level DP
# (the deployment the design card describes: the coordinator only ever sees noised sums).
# Three rounds: hospital_c's SuperNode is SIGKILLed while it trains round 2 and restarted; the
# coordinator is SIGKILLed during round 3, restarted, and the run resumed. aggregation.timeout_s
# bounds how long a SecAgg+ stage waits for the dead node.
ROUNDS = 3
OVERRIDES = [
    "aggregation=secaggplus", "strategy=dp_fedavg", f"federation.num_rounds={ROUNDS}", "training.batch_size=16",
    "training.max_physical_batch_size=16", "simulation.show_progress=false", "simulation.round_timeout_s=120",
    "aggregation.timeout_s=120", "device=cpu", "model=small_cnn", *TINY_SITES,
]
# The same tiny federation without SecAgg+: a dead site costs a round simulation.round_timeout_s.
PLAIN_OVERRIDES = [
    "aggregation=plain", "strategy=fedavg", f"federation.num_rounds={ROUNDS}", "training.batch_size=16",
    "training.max_physical_batch_size=16", "simulation.show_progress=false", "simulation.round_timeout_s=90",
    "device=cpu", "model=small_cnn", *TINY_SITES,
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


def _data_reads(node: Started, site: str) -> int:
    """How many ClientApp processes of ``node`` have read the site's data (one line each, on stderr)."""
    return node.log.read_text(errors="replace").count(f"site {site}: ") if node.log.exists() else 0


def _online(env: dict[str, str]) -> int:
    return sum(n["status"] == "online" for n in _flwr(env, "supernode", "ls", CONNECTION)["nodes"])


def _ledger_steps(state_dir: Path) -> int:
    path = state_dir / LEDGER_FILE
    return sum(h[2] for h in json.loads(path.read_text())["history"]) if path.is_file() else 0


def _kill_in_training_and_restart(procs: Processes, env: dict[str, str], nodes: list[Started], superlink: Started,
                                  site: str) -> None:
    """SIGKILL ``site``'s SuperNode once it has read its data for the next round (it is training), restart it."""
    i = SITES.index(site)
    node = nodes[i]
    reads = _data_reads(node, site)
    procs.wait_for(f"{site} training", lambda: _data_reads(node, site) > reads, timeout=900,
                   needs=(superlink, node), interval=0.2)
    procs.kill(node)
    # The SuperLink refuses the same node again (exit 305) until it has missed 2 heartbeats (≤ 60 s).
    procs.wait_for(f"the SuperLink to see {site} offline", lambda: _online(env) < len(SITES), timeout=150,
                   needs=(superlink,), interval=3)
    nodes[i] = procs.restart(node)


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
            return _online(env) == len(SITES)

        procs.wait_for("three online SuperNodes", online, timeout=60, needs=(superlink, *nodes), interval=2)

        procs.wait_for("mlflow", lambda: _mlflow_healthy(mlflow_port), timeout=90, needs=(mlflow,))

        # 4. Submit a 3-round run with Hydra overrides.
        run_config = f'overrides="{" ".join(OVERRIDES)}"'
        flwr_run = int(_flwr(env, "run", ".", CONNECTION, "--run-config", run_config, timeout=120)["run-id"])
        client = MlflowClient(tracking_uri)

        def mlflow_run_id() -> str | None:
            experiment = client.get_experiment_by_name("privmed")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return runs[0].info.run_id if runs else None

        def logged(k: int) -> Callable[[], bool]:
            return lambda: (rid := mlflow_run_id()) is not None and k in dict(_history(client, rid, "auc"))

        procs.wait_for("round 1 in MLflow", logged(1), timeout=900, needs=(superlink, mlflow, *nodes), interval=1)
        run_id = mlflow_run_id()

        # 5. SIGKILL hospital_c's SuperNode once it has read its data for round 2 (it is training),
        # and restart it: SecAgg+ unmasks the round without it, and it rejoins round 3.
        _kill_in_training_and_restart(procs, env, nodes, superlink, "hospital_c")
        procs.wait_for("round 2 in MLflow", logged(2), timeout=900, needs=(superlink, mlflow), interval=1)

        # 6. SIGKILL the coordinator (SuperLink and its ServerApp) once a site trains round 3; restart
        # it on its state file and resume the MLflow run.
        node_a = nodes[0]
        reads = _data_reads(node_a, "hospital_a")
        procs.wait_for("round 3 training", lambda: _data_reads(node_a, "hospital_a") > reads or logged(3)(),
                       timeout=900, needs=(superlink,), interval=0.2)
        procs.kill(superlink)
        assert client.get_run(run_id).info.status == "RUNNING"  # nobody closed it
        superlink = procs.restart(superlink, env={"MLFLOW_TRACKING_URI": tracking_uri})
        procs.wait_for("restarted superlink", lambda: port_open(superlink_port), timeout=60, needs=(superlink,))
        procs.wait_for("SuperNodes back online", online, timeout=120, needs=(superlink,), interval=2)
        # The state file kept the registered hospitals and the killed run.
        assert len(_flwr(env, "supernode", "ls", CONNECTION)["nodes"]) == len(SITES)
        assert any(int(r["run-id"]) == flwr_run for r in _flwr(env, "ls", CONNECTION)["runs"])
        resume_config = f'overrides="{" ".join([*OVERRIDES, f"resume={run_id}"])}"'
        resumed = int(_flwr(env, "run", ".", CONNECTION, "--run-config", resume_config, timeout=120)["run-id"])

        def status() -> str:
            return _flwr(env, "ls", CONNECTION, "--run-id", str(resumed))["runs"][0]["status"]

        # Each `flwr ls` costs a CPU-second: poll gently while the sites train.
        procs.wait_for(f"run {resumed} to finish", lambda: status().startswith("finished"), timeout=900,
                       needs=(superlink, mlflow), interval=5)
        assert status() == "finished:completed", procs.tails()

        # 7. One MLflow run holds all three rounds; hospital_c missed round 2 only, its ε continued.
        experiment = client.get_experiment_by_name("privmed")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED" and run.info.run_id == run_id
        assert [s for s, _ in _history(client, run_id, "auc")] == [1, 2, 3]
        assert _history(client, run_id, "sites_aggregated") == [(1, 3.0), (2, 2.0), (3, 3.0)]
        eps_client = [v for _, v in _history(client, run_id, "eps_client")]
        assert len(eps_client) == ROUNDS and eps_client == sorted(eps_client) and eps_client[0] > 0
        steps = {s: dict(_history(client, run_id, f"site.{s}.steps")) for s in SITES}
        per_round = steps["hospital_a"][1]
        assert steps["hospital_c"] == {1: per_round, 3: 2 * per_round}, steps
        eps_c = dict(_history(client, run_id, "site.hospital_c.eps_sample"))
        assert eps_c[3] > eps_c[1]  # continued from its ledger, never reset
        for site in SITES:
            # Each ledger holds the rounds the site trained, once each (a round re-asked after the
            # coordinator's restart was re-sent, not re-trained).
            assert _ledger_steps(tmp_path / "state" / site / site) == steps[site][ROUNDS], site
        assert run.data.metrics["eps_sample_max"] > 0
        # hospital_a's own file set its budget; the others kept the coordinator's.
        eps = {s: _history(client, run_id, f"site.{s}.eps_sample")[-1][1] for s in SITES}
        assert eps["hospital_a"] <= HOSPITAL_A_EPSILON + 1e-6 < eps["hospital_b"], eps
        assert run.data.params["model._target_"].endswith("build_small_cnn")
        summary = Path(client.download_artifacts(run_id, "report/summary.txt", str(tmp_path))).read_text()
        assert "hospital_c (round 2): " in summary, summary

        # 8. A SuperNode whose key was never registered is refused and exits.
        # (A log file, not a pipe: the SuperNode's detached SuperExec child would hold a pipe open.)
        rogue = procs.start("rogue", _supernode_cmd(certs, superlink_port, certs / "rogue" / "node_key", 'site="hospital_a"'))
        procs.wait_for("the unregistered SuperNode to exit", lambda: rogue.proc.poll() is not None, timeout=60)
        assert rogue.proc.returncode != 0, procs.tails()
        assert "Failed to activate SuperNode" in rogue.log.read_text(), procs.tails()
        assert len(_flwr(env, "supernode", "ls", CONNECTION)["nodes"]) == len(SITES)

        # 9. Plain aggregation, a new federation (fresh ledgers): hospital_c's SuperNode SIGKILLed while
        # it trains round 2; the round completes without it after round_timeout_s, and the restarted
        # SuperNode trains round 3 with its ε continuing.
        for node in nodes:
            procs.stop(node)
        # A stopped SuperNode stays "online" at the SuperLink until it misses 2 heartbeats (≤ 60 s).
        procs.wait_for("the SuperLink to see the SuperNodes offline", lambda: _online(env) == 0, timeout=150,
                       needs=(superlink,), interval=3)
        for i, site in enumerate(SITES):
            config = f'site="{site}" state-root="{tmp_path / "state-plain" / site}"'
            nodes[i] = procs.start(f"{site}-plain", _supernode_cmd(certs, superlink_port, certs / site / "node_key", config))
        procs.wait_for("three online SuperNodes", online, timeout=120, needs=(superlink, *nodes), interval=2)
        plain_config = f'overrides="{" ".join(PLAIN_OVERRIDES)}"'
        _flwr(env, "run", ".", CONNECTION, "--run-config", plain_config, timeout=120)
        procs.wait_for("round 1 of the plain run", lambda: mlflow_run_id() != run_id and logged(1)(), timeout=900,
                       needs=(superlink, mlflow, *nodes), interval=1)
        plain_id = mlflow_run_id()
        _kill_in_training_and_restart(procs, env, nodes, superlink, "hospital_c")
        procs.wait_for("the plain run to finish", lambda: client.get_run(plain_id).info.status == "FINISHED",
                       timeout=900, needs=(superlink, mlflow), interval=2)
        assert _history(client, plain_id, "sites_trained") == [(1, 3.0), (2, 2.0), (3, 3.0)], procs.tails()
        steps_c = dict(_history(client, plain_id, "site.hospital_c.steps"))
        assert steps_c == {1: steps_c[1], 3: 2 * steps_c[1]}, steps_c
        eps_c = dict(_history(client, plain_id, "site.hospital_c.eps_sample"))
        assert eps_c[3] > eps_c[1]
        summary = Path(client.download_artifacts(plain_id, "report/summary.txt", str(tmp_path / "plain"))).read_text()
        assert "hospital_c (round 2): " in summary, summary

