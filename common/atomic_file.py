"""Atomic file replacement: a crash mid-write leaves the previous file, never a truncated one.

Ledgers, stored updates and stored SVT releases all rely on it: a truncated privacy ledger
would reset a site's ε, a truncated stored update would make a resumed round train again.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(target: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a handle on a temporary file next to ``target``; on success fsync it and rename it over ``target``.

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
