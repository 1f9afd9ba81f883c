"""Idempotent rounds: a site keeps its last released update and sends it again when asked again.

A coordinator that dies after a site trained round r, but before it aggregated or
checkpointed it, asks again for round r with the same global model when it resumes. The
site's update for (r, that model) was already computed by DP-SGD and accounted in its ledger;
re-sending the same update is post-processing of that release and costs no privacy, while
training again would spend budget a second time (and could leave the site short for its
last round).

Invariant: the stored update is written *before* the ledger that accounts it, and is only
re-used while the ledger holds exactly the steps recorded with it. A crash between the two
writes leaves an update that was never sent (its steps are missing from the ledger), so the
site trains again; a crash after both writes re-sends the accounted update.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from common.atomic_file import atomic_write

UPDATE_FILE = "last_update.pt"
LOCK_FILE = ".training.lock"


@dataclass(frozen=True)
class StoredUpdate:
    """A released training reply: the round, the global model it started from, and the reply."""

    server_round: int
    model_sha256: str
    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    ledger_steps: int  # the ledger's steps once this round was accounted


@contextmanager
def training_lock(state_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the site's training lock: one round at a time reads, trains on and writes its ledger.

    A SuperNode may still be training a round for a killed coordinator when the resumed one asks
    for the same round; the second ClientApp waits here and then finds the stored update.
    """
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def model_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and bytes of the received (global) exchanged weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_update(state_dir: str | os.PathLike[str], update: StoredUpdate) -> Path:
    """Write ``update`` atomically to ``state_dir/last_update.pt`` (replacing the previous round's)."""
    target = Path(state_dir) / UPDATE_FILE
    with atomic_write(target, "wb") as handle:
        torch.save(
            {
                "server_round": update.server_round,
                "model_sha256": update.model_sha256,
                "state": update.state,
                "metrics": update.metrics,
                "ledger_steps": update.ledger_steps,
            },
            handle,
        )
    return target


def released_update(
    state_dir: str | os.PathLike[str], *, server_round: int, model_sha256: str, ledger_steps: int
) -> StoredUpdate | None:
    """The stored update for this round and global model, if it was released (accounted); else None."""
    path = Path(state_dir) / UPDATE_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable old update is simply not re-used: the site trains
        return None
    stored = StoredUpdate(
        server_round=int(saved["server_round"]),
        model_sha256=str(saved["model_sha256"]),
        state=dict(saved["state"]),
        metrics={k: float(v) for k, v in saved["metrics"].items()},
        ledger_steps=int(saved["ledger_steps"]),
    )
    if (stored.server_round, stored.model_sha256, stored.ledger_steps) != (server_round, model_sha256, ledger_steps):
        return None
    return stored
