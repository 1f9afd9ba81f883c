"""Stage timers of a site (client/timing.py): off unless $PRIVMED_TIMING_LOG is set, then one line per stage."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import timing


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # A Message needs the identity a Flower process would have (as in test_error_replies.py).
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _message(stage: str | None) -> Message:
    content = RecordDict({"secaggplus_configs": ConfigRecord({"stage": stage})} if stage else {})
    return Message(content=content, dst_node_id=1, message_type="train")


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={"site": "hospital_a"}, state=RecordDict(), run_config={})


def test_timers_write_nothing_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(timing.TIMING_LOG_ENV, raising=False)
    reply = timing.timing_mod(_message(None), _context(), lambda msg, ctxt: msg)
    assert reply.metadata.message_type == "train" and not list(tmp_path.iterdir())


def test_timers_record_startup_once_and_each_message_with_its_secagg_stage(tmp_path, monkeypatch):
    log = tmp_path / "timing.jsonl"
    monkeypatch.setenv(timing.TIMING_LOG_ENV, str(log))
    monkeypatch.setattr(timing, "_messages_seen", 0)
    for stage in ("setup", None):
        timing.timing_mod(_message(stage), _context(), lambda msg, ctxt: msg)
    with timing.timed("hospital_a", "data"):
        pass
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["stage"] for e in lines] == ["startup", "message", "message", "data"]
    assert lines[0]["s"] > 0 and all(e["site"] == "hospital_a" and e["s"] >= 0 for e in lines)
    assert [e.get("secagg_stage") for e in lines[1:3]] == ["setup", ""]
