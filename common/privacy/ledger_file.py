"""Where a site's ledgers live: a JSON file in its state dir, and a copy cached in the node's Flower state."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from common.atomic_file import atomic_write

L = TypeVar("L")


def save_ledger(text: str, state_dir: str | os.PathLike[str], file_name: str) -> Path:
    """Write ``text`` atomically to ``state_dir/file_name`` (a truncated ledger would reset ε)."""
    target = Path(state_dir) / file_name
    with atomic_write(target) as handle:
        handle.write(text)
    return target


def stored_ledgers(
    state_dir: str | os.PathLike[str], file_name: str, cached: str | None, parse: Callable[[str], L], what: str
) -> list[L]:
    """The ledgers found on disk and in the node-state cache (0, 1 or 2), parsed.

    Raises
    ------
    ValueError
        If the file on disk is unreadable: the site refuses to start over from ε = 0.
    """
    found = []
    path = Path(state_dir) / file_name
    if path.exists():
        try:
            found.append(parse(path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{what} {path} is unreadable ({err}); refusing to reset it") from err
    if cached:
        found.append(parse(cached))
    return found
