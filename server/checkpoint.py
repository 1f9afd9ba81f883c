"""The coordinator's checkpoint of a federation after every completed round, as MLflow artifacts.

What a resumed coordinator needs and nothing else lives in the run itself, so a run id is
enough to continue it from any machine that reaches the tracking server:

- ``checkpoint/arrays-<0|1>.pt``: the global exchanged weights after the round (the two files
  alternate, so the previous round's weights survive a kill during the upload);
- ``checkpoint/state.json``, written last (it names the arrays file and their SHA-256): the
  round, the client-level accountant's state (Flower's ``RdpAccountant.state_dict``), the
  adaptive clipping norm, the rows of the summary table, the sites' latest ε and the
  failures so far.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
_SCHEMA = 1


class CheckpointError(RuntimeError):
    """A run's checkpoint is missing a piece or does not match itself."""


@dataclass
class Checkpoint:
    """The coordinator's state after ``server_round`` completed rounds."""

    server_round: int
    planned_rounds: int
    arrays: dict[str, torch.Tensor]
    client_accountant: dict[str, Any] | None = None
    clipping_norm: float | None = None
    rows: list[dict[str, float]] = field(default_factory=list)
    eps_sample: dict[str, float] = field(default_factory=dict)
    failures: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(client: MlflowClient, run_id: str, checkpoint: Checkpoint) -> None:
    """Log ``checkpoint`` to the run: the arrays first, then the state naming them."""
    arrays_name = f"arrays-{checkpoint.server_round % 2}.pt"
    state = {k: v for k, v in asdict(checkpoint).items() if k != "arrays"}
    with tempfile.TemporaryDirectory() as tmp:
        arrays_path = Path(tmp) / arrays_name
        torch.save({k: v.detach().cpu() for k, v in checkpoint.arrays.items()}, arrays_path)
        client.log_artifact(run_id, str(arrays_path), CHECKPOINT_DIR)
        state.update(schema=_SCHEMA, arrays_file=arrays_name, arrays_sha256=_sha256(arrays_path))
        state_path = Path(tmp) / STATE_FILE
        state_path.write_text(json.dumps(state, allow_nan=True))
        client.log_artifact(run_id, str(state_path), CHECKPOINT_DIR)


def load_checkpoint(client: MlflowClient, run_id: str) -> Checkpoint | None:
    """The run's latest checkpoint, or None when no round completed before it stopped.

    Raises
    ------
    CheckpointError
        If the state is unreadable or its arrays file is missing or differs from the recorded hash.
    """
    names = {a.path for a in client.list_artifacts(run_id, CHECKPOINT_DIR)}
    if f"{CHECKPOINT_DIR}/{STATE_FILE}" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, f"{CHECKPOINT_DIR}/{STATE_FILE}", tmp))
        try:
            state = json.loads(local.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"run {run_id}: {CHECKPOINT_DIR}/{STATE_FILE} is unreadable ({err})") from err
        if state.get("schema") != _SCHEMA:
            raise CheckpointError(f"run {run_id}: checkpoint schema {state.get('schema')!r}, expected {_SCHEMA}")
        arrays_name = f"{CHECKPOINT_DIR}/{state.pop('arrays_file')}"
        if arrays_name not in names:
            raise CheckpointError(f"run {run_id}: {arrays_name} named by the checkpoint is missing")
        arrays_path = Path(client.download_artifacts(run_id, arrays_name, tmp))
        if _sha256(arrays_path) != state.pop("arrays_sha256"):
            raise CheckpointError(f"run {run_id}: {arrays_name} does not match the checkpoint's SHA-256")
        arrays = torch.load(arrays_path, map_location="cpu", weights_only=True)
    state.pop("schema")
    return Checkpoint(arrays=arrays, **state)
