"""Start real long-running processes for deployment tests, and always stop them again.

Every process gets its own session (process group) and log file; ``stop_all`` ends each
group and every descendant that left it (Flower's SuperExec starts its workers in new
sessions), so nothing outlives the test whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def running(pid: int, marker: str) -> set[int]:
    """Live descendants of ``pid`` whose command line contains ``marker`` (e.g. a ClientApp process)."""
    found = set()
    for child in descendants(pid):
        try:
            if marker in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.add(child)
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc; sessions and groups do not matter)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of /proc/<pid>/stat is the parent pid; the name before it may hold spaces.
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Started:
    """One started process and where its output goes."""

    name: str
    proc: subprocess.Popen
    log: Path
    cwd: Path | None = None


class Processes:
    """The processes a test started; use as a context manager so they are always stopped."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.started: list[Started] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> Started:
        """Start ``cmd`` in its own session, output to ``<log_dir>/<name>.log``."""
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        started = Started(name, proc, log, cwd)
        self.started.append(started)
        return started

    def tails(self, lines: int = 25) -> str:
        """The last ``lines`` of every log, for failure messages."""
        parts = []
        for s in self.started:
            text = s.log.read_text(errors="replace").splitlines()[-lines:] if s.log.exists() else []
            state = "running" if s.proc.poll() is None else f"exited {s.proc.returncode}"
            parts.append(f"----- {s.name} ({state}) -----\n" + "\n".join(text))
        return "\n".join(parts)

    def wait_for(
        self,
        what: str,
        ready: Callable[[], bool],
        *,
        timeout: float,
        needs: tuple[Started, ...] = (),
        interval: float = 0.5,
    ) -> None:
        """Poll ``ready`` every ``interval`` s; fail after ``timeout`` s, or at once when one of ``needs`` exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [s.name for s in needs if s.proc.poll() is not None]
            if dead:
                raise AssertionError(f"{', '.join(dead)} exited while waiting for {what}\n{self.tails()}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.tails()}")

    def stop(self, started: Started, *, grace: float = 10.0) -> None:
        """SIGTERM the process group and strays, then SIGKILL whatever is left after ``grace`` s."""
        pids = [started.proc.pid, *descendants(started.proc.pid)]
        _signal_group(started.proc.pid, signal.SIGTERM)
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        try:
            started.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids[1:]):
            time.sleep(0.2)
        _signal_group(started.proc.pid, signal.SIGKILL)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        started.proc.wait()

    def kill(self, started: Started) -> None:
        """SIGKILL the process group and every descendant at once: a crash, no chance to clean up."""
        pids = [started.proc.pid, *descendants(started.proc.pid)]
        _signal_group(started.proc.pid, signal.SIGKILL)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        started.proc.wait()

    def restart(self, started: Started, *, env: dict[str, str] | None = None) -> Started:
        """Start ``started``'s command again (same arguments and cwd), logging to ``<name>-restarted.log``."""
        args = started.proc.args
        return self.start(f"{started.name}-restarted", list(args), cwd=started.cwd, env=env)

    def stop_all(self) -> None:
        """Stop every started process, newest first."""
        for started in reversed(self.started):
            self.stop(started)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
