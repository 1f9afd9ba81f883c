"""What leaves a hospital: every key a site sends to the coordinator, declared with its status.

The privacy rule: nothing computed from a site's training patients leaves the site unless an
accounted DP guarantee covers it. This registry is the declaration a data protection officer
reads (README "What leaves a hospital" is generated from it) and the list
``tests/test_release_inventory.py`` checks real messages against: a key that a site sends and
that is not declared here fails the test.

A key is addressed as ``<record>/<key>`` inside a reply's content (``metrics/eps-sample``);
error replies carry ``error/code`` and ``error/reason``. ``<...>`` in a declared key stands for
any name (model tensor names, class names). Flower's own envelope (node, run and message ids)
is transport, not content, and is not listed.

Any helper adding a key to a message a site sends adds it here, with its status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Status(Enum):
    """Why a released value may leave the site."""

    SAMPLE_DP = "sample-level DP"
    CLIENT_DP = "client-level DP"
    TEST_SET = "test set (not DP)"
    PUBLIC = "public"
    PROTOCOL = "SecAgg+ protocol"
    NOT_PRIVATE = "privacy=none only (no DP)"


STATUS_MEANING = {
    Status.SAMPLE_DP: "output of DP-SGD: covered by the site's sample-level (ε, δ), accounted in its ledger",
    Status.CLIENT_DP: (
        "covered by client-level DP. No key a site sends is in this class: under "
        "`strategy=dp_fedavg` the coordinator adds the client-level noise to the aggregate "
        "(under SecAgg+ after each site clipped its own update), so client-level DP protects what "
        "the coordinator publishes, while each site's own release stays covered by its sample-level ε"
    ),
    Status.TEST_SET: (
        "computed only on the site's held-out test patients (never trained on). **Not DP**: "
        "it tells the coordinator how the global model does on those patients"
    ),
    Status.PUBLIC: "configuration or accounting metadata, public by design (the reason is in the row)",
    Status.PROTOCOL: (
        "a SecAgg+ protocol message (Flower's `secaggplus_mod`): public keys, encrypted key shares, "
        "the masked update; the coordinator learns only the sum of the sites' updates"
    ),
    Status.NOT_PRIVATE: (
        "sent only by a site that trains with `privacy=none`, which a site reading real patient files "
        "refuses unless the hospital's own site file allows it"
    ),
}


class Reply(Enum):
    """The kinds of message a site sends."""

    TRAIN = "train reply"
    TRAIN_SECAGG = "train reply, SecAgg+"
    EVALUATE = "evaluate reply"
    ERROR = "error reply"


@dataclass(frozen=True)
class Release:
    """One key a site sends: where, computed from what, and why it may leave."""

    message: Reply
    key: str  # "<record>/<key>"; "<...>" matches any name
    computed_from: str
    status: Status

    def matches(self, message: Reply, address: str) -> bool:
        """Whether ``address`` in a ``message`` is this declared release."""
        pattern = ".+".join(re.escape(part) for part in re.split(r"<[^>]+>", self.key))
        return message is self.message and re.fullmatch(pattern, address) is not None


_ACCOUNTING = (
    # The DP guarantee is stated in these terms; they depend on the config and on ⌈N/B⌉ only.
    ("eps-sample", "the site's cumulative ε from its ledger: a function of (σ, q, steps, δ)"),
    ("steps", "optimizer steps so far: rounds × local epochs × ⌈N/B⌉ (N training patients, B batch size)"),
    ("noise-multiplier", "σ, calibrated once from the site's target ε, δ, q and planned steps (or set in config)"),
    ("sample-rate", "Poisson sampling rate q = 1/⌈N/B⌉"),
)
_WHY_ACCOUNTING = (
    "; public accounting: reveals N only to within the batch size B, never the exact count, "
    "and the DP guarantee is stated in these terms (DP-SGD treats q as public)"
)
_SITE_META = (
    ("site-index", "the site's position in the federation config; public (the coordinator wrote that config)"),
    ("uniform-weight", "the constant 1 (one site, one vote); public: carries no data"),
)


def _metric_releases(message: Reply, record: str) -> list[Release]:
    """The train metrics a site sends, in the clear, in either aggregation mode."""
    out = [Release(message, f"{record}/{key}", text, Status.PUBLIC) for key, text in _SITE_META]
    out += [Release(message, f"{record}/{key}", text + _WHY_ACCOUNTING, Status.PUBLIC) for key, text in _ACCOUNTING]
    out.append(
        Release(
            message,
            f"{record}/num-examples",
            "the exact number of training examples; plain FedAvg weights by it when no site is private "
            "(private sites send no count: every site has weight 1)",
            Status.NOT_PRIVATE,
        )
    )
    return out


INVENTORY: tuple[Release, ...] = (
    # -- train reply, aggregation=plain (Flower Message API) ------------------------------
    # strategy=partial_sharing|svt: a share of the update's coordinates instead of the weights.
    Release(
        Reply.TRAIN,
        "arrays/values",
        "partial_sharing|svt: the shared coordinates of the update Δ after DP-SGD (svt: chosen and noised "
        "by SVT, which adds a site-level ε_svt on top)",
        Status.SAMPLE_DP,
    ),
    Release(
        Reply.TRAIN,
        "arrays/indices",
        "partial_sharing|svt: positions of the shared coordinates (largest |Δ|, or SVT's choice), a function of Δ",
        Status.SAMPLE_DP,
    ),
    Release(Reply.TRAIN, "arrays/mask", "partial_sharing|svt: the same positions as a bit mask", Status.SAMPLE_DP),
    Release(
        Reply.TRAIN,
        "metrics/shared-coordinates",
        "partial_sharing|svt: how many coordinates were shared (the length of `indices`)",
        Status.SAMPLE_DP,
    ),
    Release(
        Reply.TRAIN,
        "metrics/eps-svt",
        "svt: the site's cumulative SVT ε, a function of the config and the model size; public accounting",
        Status.PUBLIC,
    ),
    Release(
        Reply.TRAIN,
        "arrays/<exchanged tensor>",
        "the site's trained weights after local DP-SGD (only the trained part: norm layers + head by "
        "default); with `privacy=none` plain SGD, not DP",
        Status.SAMPLE_DP,
    ),
    *_metric_releases(Reply.TRAIN, "metrics"),
    # -- train replies, aggregation=secaggplus (Flower's legacy FitRes through secaggplus_mod) --
    Release(Reply.TRAIN_SECAGG, "secaggplus_configs/pk1", "stage 1: the site's fresh public key for pairwise masks", Status.PROTOCOL),
    Release(Reply.TRAIN_SECAGG, "secaggplus_configs/pk2", "stage 1: the site's fresh public key for share encryption", Status.PROTOCOL),
    Release(Reply.TRAIN_SECAGG, "secaggplus_configs/dsts", "stage 2: node ids of the neighbours the shares go to", Status.PROTOCOL),
    Release(
        Reply.TRAIN_SECAGG,
        "secaggplus_configs/ctxts",
        "stage 2: Shamir shares of the site's mask secrets, each encrypted for one neighbour",
        Status.PROTOCOL,
    ),
    Release(
        Reply.TRAIN_SECAGG,
        "secaggplus_configs/masked_params",
        "stage 3: the site's update Δ (clipped by the site under DP-FedAvg; an output of DP-SGD), "
        "quantized and masked with pairwise and private masks",
        Status.PROTOCOL,
    ),
    Release(Reply.TRAIN_SECAGG, "secaggplus_configs/nids", "stage 4: node ids of the shares sent back", Status.PROTOCOL),
    Release(
        Reply.TRAIN_SECAGG,
        "secaggplus_configs/shares",
        "stage 4: shares the site holds: private-mask seeds of live neighbours, mask keys of dropped ones",
        Status.PROTOCOL,
    ),
    *_metric_releases(Reply.TRAIN_SECAGG, "fitres.metrics"),
    Release(
        Reply.TRAIN_SECAGG,
        "fitres.num_examples/num_examples",
        "the constant 1: every site has weight 1 in the masked sum; public (carries no data)",
        Status.PUBLIC,
    ),
    Release(Reply.TRAIN_SECAGG, "fitres.status/code", "Flower's status code OK; public (a constant)", Status.PUBLIC),
    Release(Reply.TRAIN_SECAGG, "fitres.status/message", "empty; public (a constant)", Status.PUBLIC),
    # -- evaluate reply (both aggregation modes) --------------------------------------------
    Release(Reply.EVALUATE, "metrics/loss", "mean loss of the global model on the site's test patients", Status.TEST_SET),
    Release(Reply.EVALUATE, "metrics/auc", "AUC of the global model on the site's test patients (classification)", Status.TEST_SET),
    Release(Reply.EVALUATE, "metrics/dice", "mean Dice on the site's test patients (segmentation)", Status.TEST_SET),
    Release(Reply.EVALUATE, "metrics/dice.<class>", "Dice of one structure on the site's test patients", Status.TEST_SET),
    Release(Reply.EVALUATE, "metrics/num-examples", "the number of test examples (weights the averages)", Status.TEST_SET),
    *[Release(Reply.EVALUATE, f"metrics/{key}", text, Status.PUBLIC) for key, text in _SITE_META],
    # -- error reply (any message) -----------------------------------------------------------
    Release(
        Reply.ERROR,
        "error/code",
        "kind of failure: 4001 budget refused, 4002 update rejected, 4003 privacy=none refused, 4000 other; "
        "public: no data",
        Status.PUBLIC,
    ),
    Release(
        Reply.ERROR,
        "error/reason",
        "`site <name>: <kind>` only (kind = the refusal or the exception's class name); a budget refusal "
        "adds ε now, ε after the round and the budget (public accounting). Paths, patient ids and values "
        "stay in the site's log",
        Status.PUBLIC,
    ),
)


def declared(message: Reply, address: str) -> Release | None:
    """The declared release for ``address`` in ``message``, or None if it is not declared."""
    return next((r for r in INVENTORY if r.matches(message, address)), None)


def released_keys(message_type: str, reply: Any) -> tuple[Reply, list[str]]:
    """Classify a Flower reply a site sends and list the addresses of everything it carries.

    Parameters
    ----------
    message_type : str
        The incoming message's type (``train``, ``evaluate``, ...).
    reply : flwr.app.Message
        The reply as it leaves the site's ClientApp.
    """
    if reply.has_error():
        return Reply.ERROR, ["error/code", "error/reason"]
    content = reply.content
    records = {**content.array_records, **content.metric_records, **content.config_records}
    keys = [f"{name}/{key}" for name, record in records.items() for key in record]
    if message_type == "evaluate":
        return Reply.EVALUATE, keys
    secure = "secaggplus_configs" in content.config_records
    return (Reply.TRAIN_SECAGG if secure else Reply.TRAIN), keys


def inventory_markdown() -> str:
    """README "What leaves a hospital": one table row per declared key, then what each status means."""
    lines = ["| message | key | computed from | status |", "|---|---|---|---|"]
    for r in INVENTORY:
        text = r.computed_from.replace("|", "\\|")  # a bar inside a cell would split it
        lines.append(f"| {r.message.value} | `{r.key}` | {text} | {r.status.value} |")
    lines += ["", "Statuses:", ""]
    lines += [f"- **{s.value}**: {STATUS_MEANING[s]}." for s in Status]
    return "\n".join(lines)


if __name__ == "__main__":
    print(inventory_markdown())
