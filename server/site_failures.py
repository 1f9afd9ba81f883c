"""Which sites failed or refused during a federation, and why, in one line each.

Flower hands a strategy only the replies that arrived; error replies and sites that never
answered are logged and dropped. :class:`RecordingGrid` sits between the round loop (plain
or SecAgg+) and Flower's grid and notes both, so the final summary can name each site that
failed or refused with its one-line reason instead of leaving it in worker tracebacks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

# A site's error reason starts with "site <name>: ..." (sanitised replies, site-side errors).
_SITE_REASON = re.compile(r"site (?P<site>[\w.-]+): (?P<what>.+)")
# Flower's simulation wraps a ClientApp's exception text in this.
_FLOWER_PREFIX = re.compile(r"^Exception \w+ occurred\. Message:\s*")
# A one-line reason is cut here: the summary is a table, not a log.
_MAX_REASON_CHARS = 160


@dataclass
class SiteFailures:
    """Failures per site: the rounds it failed in and its latest one-line reason.

    Parameters
    ----------
    sites : list of str
        Site names in partition order (a reply's ``site-index`` indexes this list).
    round_offset : int
        Rounds completed before this process started (resume): Flower counts from 1 again.
    """

    sites: list[str]
    round_offset: int = 0
    rounds: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    _node_site: dict[int, str] = field(default_factory=dict)

    def learn(self, reply: Message) -> None:
        """Remember which site a node is, from a reply that names its ``site-index``."""
        if not reply.has_content():
            return
        for record in reply.content.metric_records.values():
            if "site-index" in record:
                index = int(record["site-index"])
                if 0 <= index < len(self.sites):
                    self._node_site[reply.metadata.src_node_id] = self.sites[index]

    def record(self, node_id: int, group_id: str, reason: str) -> None:
        """Note that ``node_id`` failed in round ``group_id`` (Flower's round number) for ``reason``."""
        line = one_line(reason)
        match = _SITE_REASON.search(line)
        site = match.group("site") if match else self._node_site.get(node_id, f"node {node_id}")
        server_round = int(group_id) + self.round_offset if group_id.isdigit() else None
        rounds = self.rounds.setdefault(site, [])
        if server_round is not None and server_round not in rounds:
            rounds.append(server_round)
        self.reasons[site] = line

    def lines(self) -> list[str]:
        """One line per failed site: ``<site> (rounds 2, 3): <reason>``."""
        out = []
        for site, reason in self.reasons.items():
            rounds = self.rounds.get(site, [])
            when = f" (round{'s' if len(rounds) > 1 else ''} {', '.join(map(str, rounds))})" if rounds else ""
            out.append(f"{site}{when}: {reason}")
        return out

    def to_json(self) -> dict:
        """What a checkpoint keeps, so a resumed run still names earlier failures."""
        return {"rounds": self.rounds, "reasons": self.reasons}

    def restore(self, state: dict) -> None:
        """Take back what :meth:`to_json` returned."""
        self.rounds = {k: list(v) for k, v in state.get("rounds", {}).items()}
        self.reasons = dict(state.get("reasons", {}))


def one_line(reason: str) -> str:
    """The informative line of an error reason (Flower wraps a site's exception in its own text)."""
    lines = [ln.strip(" '\"<>") for ln in reason.splitlines() if ln.strip(" '\"<>")]
    if not lines:
        return "failed (no reason given)"
    named = [ln for ln in lines if _SITE_REASON.search(ln)]
    # Flower's text ends with the exception's own line ("DataError: ..."), after the traceback.
    line = named[-1] if named else lines[-1]
    match = _SITE_REASON.search(line)
    line = match.group(0) if match else _FLOWER_PREFIX.sub("", line)
    return line if len(line) <= _MAX_REASON_CHARS else line[: _MAX_REASON_CHARS - 1] + "…"


def _round_of(msg: Message) -> str:
    """Flower's round of a sent message: its group id (legacy workflows), else its config's ``server-round``."""
    if msg.metadata.group_id.isdigit():
        return msg.metadata.group_id
    if msg.has_content():
        for record in msg.content.config_records.values():
            if "server-round" in record:
                return str(int(record["server-round"]))
    return msg.metadata.group_id


class RecordingGrid(Grid):
    """Flower's grid, unchanged, except that failed and missing replies are noted in ``failures``."""

    def __init__(self, grid: Grid, failures: SiteFailures) -> None:
        self._grid = grid
        self.failures = failures

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's ``send_and_receive``; then note error replies and destinations that never replied."""
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        # The SuperLink answers for a node that stopped sending heartbeats ("Node Unavailable") as
        # itself, without the round: the message a reply answers names the node and the round.
        sent = {m.metadata.message_id: m for m in messages if m.metadata.message_id}
        # Error replies may come without the round; the messages of one call are one round's.
        rounds = {_round_of(m) for m in messages}
        round_sent = rounds.pop() if len(rounds) == 1 else ""
        answered = set()
        for reply in replies:
            request = sent.get(reply.metadata.reply_to_message_id)
            node = request.metadata.dst_node_id if request is not None else reply.metadata.src_node_id
            answered.add(node)
            if reply.has_error():
                group = _round_of(request) if request is not None else (reply.metadata.group_id or round_sent)
                self.failures.record(node, group, reply.error.reason)
            else:
                self.failures.learn(reply)
        for msg in messages:
            if msg.metadata.dst_node_id not in answered:
                self.failures.record(
                    msg.metadata.dst_node_id, _round_of(msg), f"no reply within {timeout:g}s (node lost or too slow)"
                    if timeout is not None else "no reply (node lost)"
                )
        return replies

    # -- everything else is Flower's grid as it is ---------------------------------------
    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's Run
        self._grid.set_run(run)

    @property
    def run(self):  # noqa: ANN201 - Flower's Run
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def __getattr__(self, name: str):  # noqa: ANN204 - anything newer Flower grids add
        return getattr(self._grid, name)
