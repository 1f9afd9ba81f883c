"""Where a site's time goes: stage timers written to a local file, for ``bench/deploy_round.py``.

Off unless ``$PRIVMED_TIMING_LOG`` names a file; then every ClientApp process appends one JSON
line per timed stage (process start-up, config, data read, model build, DP-SGD, evaluation,
each message's handling, with its SecAgg+ stage). The file stays at the site and nothing here
goes into a reply: the lines hold durations of the site's own processes only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

TIMING_LOG_ENV = "PRIVMED_TIMING_LOG"
_messages_seen = 0  # in this process: a deployed ClientApp process answers one message, a simulation actor many


def process_age_s() -> float:
    """Seconds since this process started (interpreter start-up and imports included), from /proc."""
    with open("/proc/self/stat") as handle:
        # Field 22 is the start time in clock ticks after boot; the name before it may hold spaces.
        start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as handle:
        boot = next(int(line.split()[1]) for line in handle if line.startswith("btime"))
    return time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK"))


def record(site: str, stage: str, seconds: float, **extra: object) -> None:
    """Append one stage's duration to ``$PRIVMED_TIMING_LOG`` (nothing when unset)."""
    path = os.environ.get(TIMING_LOG_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "site": site, "stage": stage, "s": seconds, **extra})
    with open(path, "a") as handle:  # one short write per line: appends from parallel processes stay whole
        handle.write(line + "\n")


@contextmanager
def timed(site: str, stage: str, **extra: object) -> Iterator[None]:
    """Record how long the ``with`` block took as ``stage``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record(site, stage, time.perf_counter() - started, **extra)


def timing_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Outermost client mod: start-up before the first message of a process, and each message's handling."""
    global _messages_seen
    if not os.environ.get(TIMING_LOG_ENV):
        return call_next(msg, ctxt)
    node = ctxt.node_config
    site = str(node.get("site", f"partition-{node.get('partition-id', '?')}"))
    _messages_seen += 1
    if _messages_seen == 1:
        record(site, "startup", process_age_s())
    stage = ""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, ""))
    with timed(site, "message", kind=msg.metadata.message_type, secagg_stage=stage):
        return call_next(msg, ctxt)
