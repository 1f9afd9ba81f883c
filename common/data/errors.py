"""Bad input files: one clear error naming the file, or a counted skip where the site allows it."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

ON_BAD_FILE = ("error", "skip")


class DataError(ValueError):
    """A site's data cannot be read as configured; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class BadFiles:
    """What a reader does with a bad file: raise (``error``) or count, log and skip it (``skip``).

    Parameters
    ----------
    policy : str
        The site's ``data.on_bad_file``: ``error`` or ``skip``.
    """

    def __init__(self, policy: str = "error") -> None:
        if policy not in ON_BAD_FILE:
            raise ValueError(f"data.on_bad_file must be one of {ON_BAD_FILE}, got {policy!r}")
        self.policy = policy
        self.skipped: list[str] = []

    def handle(self, err: DataError) -> None:
        """Raise ``err``, or record the skip when the site allows skipping."""
        if self.policy == "error":
            raise err
        self.skipped.append(str(err))
        log.warning("skipped %s", err)

    @property
    def count(self) -> int:
        """Number of files skipped so far."""
        return len(self.skipped)
