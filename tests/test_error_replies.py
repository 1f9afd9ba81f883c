"""The site's error sanitiser: the coordinator learns the site and the kind, the site's log the rest."""

from __future__ import annotations

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.supercore.task_identity import TaskIdentity

from client.error_replies import BUDGET_REFUSED, NON_PRIVATE_REFUSED, SITE_FAILED, sanitising_mod
from common.data.errors import DataError
from common.federation_config import NonPrivateRefused
from common.privacy import PrivacyBudgetExceeded

SECRET = "/data/chest_xray/test/NORMAL/IM-1003-0001.jpeg"


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Flower stamps messages with the running task's identity; outside a runtime, give it one."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 7)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _message() -> Message:
    return Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.TRAIN)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={"site": "hospital_a"}, state=RecordDict(), run_config={})


def _reply(raised: BaseException | None = None, error: Error | None = None) -> Message:
    def call_next(msg: Message, ctxt: Context) -> Message:
        if raised is not None:
            raise raised
        return Message(error=error, reply_to=msg)

    mod = sanitising_mod(lambda ctxt: str(ctxt.node_config["site"]))
    return mod(_message(), _context(), call_next)


@pytest.mark.parametrize(
    ("raised", "code", "reason"),
    [
        (DataError(SECRET, "patient 'IM-1003' is in both the train and test folders"), SITE_FAILED, "site hospital_a: DataError"),
        (KeyError(SECRET), SITE_FAILED, "site hospital_a: KeyError"),
        (NonPrivateRefused(f"site hospital_a reads {SECRET}"), NON_PRIVATE_REFUSED, "site hospital_a: privacy=none refused"),
    ],
)
def test_exceptions_leave_as_site_and_kind_only(raised, code, reason, capsys):
    reply = _reply(raised)
    assert reply.has_error() and reply.error.code == code and reply.error.reason == reason
    # The details are in the site's own log, not in the reply.
    assert SECRET in capsys.readouterr().err


def test_budget_refusal_keeps_only_its_epsilon_numbers():
    err = PrivacyBudgetExceeded(f"site hospital_a at {SECRET}", epsilon=7.5, projected=8.4, budget=8.0)
    reply = _reply(err)
    assert reply.error.code == BUDGET_REFUSED
    assert reply.error.reason == "site hospital_a: budget refused (ε 7.500 would become 8.400 > budget 8)"


def test_error_replies_built_inside_the_app_are_sanitised_too(capsys):
    reply = _reply(error=Error(code=17, reason=f"{SECRET}: truncated"))
    assert reply.error.code == 17 and reply.error.reason == "site hospital_a: error 17"
    assert SECRET in capsys.readouterr().err


def test_good_replies_pass_unchanged():
    mod = sanitising_mod(lambda ctxt: "hospital_a")
    sent = Message(content=RecordDict(), dst_node_id=7, message_type=MessageType.EVALUATE)
    reply = mod(sent, _context(), lambda msg, ctxt: Message(content=RecordDict(), reply_to=msg))
    assert not reply.has_error()
