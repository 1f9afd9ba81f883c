"""Atomic writes: ledgers and stored updates are replaced whole or not at all."""

import pytest

from client.round_store import StoredUpdate, released_update, save_update
from common.atomic_file import atomic_write


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "ledger.json"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half a ledg")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_successful_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "ledger.json"
    with atomic_write(target) as handle:
        handle.write("new")
    assert target.read_text() == "new"


def test_stored_update_round_trips(tmp_path):
    import torch

    update = StoredUpdate(server_round=3, model_sha256="ab", state={"w": torch.ones(2)}, metrics={"m": 1.0},
                          ledger_steps=7)
    save_update(tmp_path, update)
    again = released_update(tmp_path, server_round=3, model_sha256="ab", ledger_steps=7)
    assert again is not None and torch.equal(again.state["w"], torch.ones(2))
