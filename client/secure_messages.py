"""The site's side of SecAgg+ rounds: Flower's ``secaggplus_mod`` and its legacy message format.

Flower 1.41 has SecAgg+ only on the legacy path: the protocol's training message carries a
``FitIns`` and the mod masks the ``FitRes`` the app returns. These helpers translate between
that format and the named tensors the site trains with, so the ClientApp has one train handler
for both aggregation modes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

if TYPE_CHECKING:
    import torch

# Where a legacy FitIns keeps its weights inside a RecordDict.
FIT_INS_ARRAYS = "fitins.parameters"


class SiteRefusedRound(RuntimeError):
    """The site's app refused a SecAgg+ round; the message is the site's reason."""


def is_secure_fit(content: RecordDict) -> bool:
    """Whether a training message is SecAgg+'s (legacy FitIns) rather than a plain one."""
    return FIT_INS_ARRAYS in content.array_records


def read_fit_ins(content: RecordDict, keys: list[str]) -> tuple[OrderedDict[str, torch.Tensor], dict]:
    """The global weights (named by ``keys``, the exchanged order) and the round config."""
    import torch  # here, not with the app: SecAgg+ key stages run in processes that never need torch

    fit_ins = compat.recorddict_to_fitins(content, keep_input=True)
    arrays = parameters_to_ndarrays(fit_ins.parameters)
    if len(arrays) != len(keys):
        raise ValueError(f"SecAgg+ round sent {len(arrays)} arrays, the model exchanges {len(keys)}")
    state = OrderedDict((k, torch.from_numpy(a.copy())) for k, a in zip(keys, arrays, strict=True))
    return state, dict(fit_ins.config)


def fit_res_content(update: OrderedDict[str, torch.Tensor], metrics: dict[str, float]) -> RecordDict:
    """A FitRes for ``secaggplus_mod`` to mask: equal weight (1) for every site."""
    fit_res = FitRes(
        status=Status(code=Code.OK, message=""),
        parameters=ndarrays_to_parameters([t.numpy() for t in update.values()]),
        # One site, one vote: client-level DP accounting needs equal weights, and the
        # coordinator does not learn how many patients a site has from the masked sum.
        num_examples=1,
        metrics=dict(metrics),
    )
    return compat.fitres_to_recorddict(fit_res, keep_input=True)


def secure_aggregation_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Send SecAgg+ protocol messages through Flower's ``secaggplus_mod``; others straight on."""
    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)

    def masked_fit(inner: Message, context: Context) -> Message:
        reply = call_next(inner, context)
        if reply.has_error():
            # secaggplus_mod expects a FitRes; raising keeps the site's reason in the error
            # the coordinator receives, and SecAgg+ treats the site as dropped.
            raise SiteRefusedRound(reply.error.reason)
        return reply

    return secaggplus_mod(msg, ctxt, masked_fit)
