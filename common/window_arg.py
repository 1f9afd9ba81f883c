"""``--window LOW HIGH | none`` as the prediction command lines take it (privmed-predict, privmed-infer)."""

from __future__ import annotations


def parse_window_arg(values: list[str] | None, default: str) -> list[float] | None | str:
    """The window a command line asked for.

    ``None`` (flag absent) gives ``default`` (the marker the caller resolves later, e.g. ``"model"``:
    the training sites' window), ``["none"]`` no window, two numbers the window itself.

    Raises
    ------
    ValueError
        If the flag has neither two numbers nor ``none``.
    """
    if values is None:
        return default
    if values == ["none"]:
        return None
    if len(values) != 2:
        raise ValueError(f"--window takes LOW HIGH or none, got {values}")
    try:
        return [float(v) for v in values]
    except ValueError:
        raise ValueError(f"--window takes LOW HIGH or none, got {values}") from None
