"""What the coordinator sees of the audited site each round, recorded for the membership audit.

An outermost ClientApp mod at the audited site (outside SecAgg+ and the error sanitiser, so it
sees exactly what arrives and what leaves) writes, for every training round, the global model the
site received and the weights it sent back. Under ``aggregation=plain`` those weights are what
the coordinator receives; under SecAgg+ the reply is masked and only the global models are kept.
Sites run in separate processes: the records go to files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import Context, Message

_NAME = "round-{:04d}.pt"


def round_recorder(site_index: int, folder: Path):
    """A Flower mod recording the ``site_index``-th simulated site's train rounds under ``folder``."""
    folder = Path(folder)

    def mod(msg: Message, ctxt: Context, call_next) -> Message:
        reply = call_next(msg, ctxt)
        if int(ctxt.node_config.get("partition-id", -1)) != site_index or not str(msg.metadata.message_type).startswith("train"):
            return reply
        if "arrays" not in msg.content or "config" not in msg.content:
            return reply  # a SecAgg+ stage: nothing the plain path would see
        record = {"global": msg.content["arrays"].to_torch_state_dict(), "sent": None}
        if not reply.has_error() and "arrays" in reply.content:
            record["sent"] = reply.content["arrays"].to_torch_state_dict()
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(record, folder / _NAME.format(int(msg.content["config"]["server-round"])))
        return reply

    return mod


def recorded_rounds(folder: Path) -> list[dict]:
    """The records in round order (empty when none were written)."""
    return [torch.load(p, weights_only=True) for p in sorted(Path(folder).glob("round-*.pt"))]
