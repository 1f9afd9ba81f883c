"""What a failing site tells the coordinator: which site and what kind of failure, nothing else.

Flower turns an exception that escapes a ClientApp into an error reply whose reason is the
exception's text, and our own errors name files, patients and data values so that a hospital's
operator can fix them (``…/IM-1003-0001.jpeg: patient 'IM-1003' is in both the train and test
folders``). That text must stay at the hospital. :func:`sanitising_mod` is the outermost mod of
the site's ClientApp:

1. Run the rest of the app; catch any exception before Flower would turn it into a reason.
2. Write the full text and traceback to the site's own log (stderr, which the site's operator
   reads; simulation workers forward it).
3. Reply with an error whose reason is ``site <name>: <kind>`` only. A budget refusal keeps its
   ε numbers (public accounting, stated in the same terms as the ``eps-sample`` it already
   reports); nothing else keeps any detail.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

if TYPE_CHECKING:
    from common.privacy import PrivacyBudgetExceeded

# Error codes the coordinator receives (Flower's own codes are below 100).
BUDGET_REFUSED = 4001  # the round would exceed the site's privacy budget
UPDATE_REJECTED = 4002  # the update cannot be aggregated securely (NaN, outside the SecAgg+ range)
NON_PRIVATE_REFUSED = 4003  # privacy=none on real patient files the hospital has not allowed
SITE_FAILED = 4000  # anything else: the kind is the exception's class name

# Refusals a site states on purpose: code -> kind.
_KIND_OF_CODE = {BUDGET_REFUSED: "budget refused", UPDATE_REJECTED: "update rejected",
                 NON_PRIVATE_REFUSED: "privacy=none refused"}


def _refusals() -> tuple[tuple[type[BaseException], int], ...]:
    """The refusals' exception types and codes."""
    # Imported when a message fails, not with the app: they live beside torch and Opacus (~5 s
    # of imports), which a deployed site's per-message process for a SecAgg+ key stage never needs.
    from client.secure_update import UpdateRejected
    from common.federation_config import NonPrivateRefused
    from common.privacy import PrivacyBudgetExceeded

    return (PrivacyBudgetExceeded, BUDGET_REFUSED), (UpdateRejected, UPDATE_REJECTED), (NonPrivateRefused, NON_PRIVATE_REFUSED)


def public_error(site: str, err: BaseException) -> Error:
    """The error reply the coordinator may see for ``err`` at ``site``: site, kind, public numbers."""
    for refusal, code in _refusals():
        if isinstance(err, refusal):
            detail = budget_detail(err) if code == BUDGET_REFUSED else ""
            return Error(code=code, reason=f"site {site}: {_KIND_OF_CODE[code]}{detail}")
    # A class name is code, not data: it says what kind of failure without any value.
    return Error(code=SITE_FAILED, reason=f"site {site}: {type(err).__name__}")


def budget_detail(err: PrivacyBudgetExceeded) -> str:
    """ε now, ε after the refused round and the budget: accounting the site reports anyway."""
    numbers = (err.epsilon, err.projected, err.budget)
    if any(n is None for n in numbers):
        return ""
    return f" (ε {err.epsilon:.3f} would become {err.projected:.3f} > budget {err.budget:g})"


def sanitising_mod(site_of: Callable[[Context], str]) -> Mod:
    """The outermost mod of a site's ClientApp: errors leave as ``site <name>: <kind>`` only.

    Parameters
    ----------
    site_of : callable
        The site's name for a context; must not raise (it is called while handling a failure).
    """

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        try:
            reply = call_next(msg, ctxt)
        except Exception as err:  # noqa: BLE001 - every failure must be sanitised, whatever its type
            site = site_of(ctxt)
            _log_locally(site, msg, f"{type(err).__name__}: {err}", traceback.format_exc())
            return Message(error=public_error(site, err), reply_to=msg)
        if not reply.has_error():
            return reply
        # An error reply built inside the app (or by a Flower mod) carries a free-text reason.
        site, error = site_of(ctxt), reply.error
        _log_locally(site, msg, f"error {error.code}: {error.reason}", "")
        kind = _KIND_OF_CODE.get(int(error.code), f"error {int(error.code)}")
        return Message(error=Error(code=int(error.code), reason=f"site {site}: {kind}"), reply_to=msg)

    return mod


def _log_locally(site: str, msg: Message, text: str, trace: str) -> None:
    # stderr is the site's own log: a SuperNode's operator reads it, simulation workers forward it.
    print(
        f"site {site}: {msg.metadata.message_type} failed; the coordinator is told only the kind of failure.\n"
        f"{trace or text}",
        file=sys.stderr,
        flush=True,
    )
