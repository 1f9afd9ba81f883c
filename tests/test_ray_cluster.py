"""A simulation attached to a running Ray cluster (`ray start --head` on 127.0.0.1, started here)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from server.simulate import simulate

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-node Ray cluster of 2 CPUs; yields (address, its session log folder).

    Started with ``--block`` in its own process group and stopped by signalling that group:
    ``ray stop`` would stop every Ray instance on the machine, other tests' included.
    """
    # Ray's socket paths must stay short (AF_UNIX limit): a short temp root, not pytest's tmp_path.
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    address = f"127.0.0.1:{_free_port()}"
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={address.split(':')[1]}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not come up within 120 s"
            time.sleep(1)
        yield address, temp_dir / "session_latest" / "logs"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_simulation_runs_on_an_existing_ray_cluster(tiny_config, ray_head, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    address, logs = ray_head
    cfg = tiny_config(f"simulation.ray_address={address}", "federation.num_rounds=1", "model=small_cnn")
    report = simulate(cfg)
    run = MlflowClient(report.tracking_uri).get_run(report.run_id)
    assert run.info.status == "FINISHED" and "auc" in run.data.metrics
    # The sites ran as actors of that cluster: Ray names each actor in its worker's log there.
    actor_logs = [p for p in logs.glob("worker-*.out") if "ClientAppActor" in p.read_text(errors="replace")]
    assert actor_logs, f"no ClientAppActor ran on the cluster (logs: {sorted(p.name for p in logs.iterdir())})"
