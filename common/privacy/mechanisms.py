"""Registry of the Opacus accountants a site may use."""

from __future__ import annotations

from opacus.accountants import IAccountant, create_accountant

MECHANISMS = ("rdp", "prv", "gdp")


def new_accountant(mechanism: str) -> IAccountant:
    """Return a fresh Opacus accountant for ``mechanism``.

    Raises
    ------
    ValueError
        Naming the unknown value and the valid ones.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown privacy accountant {mechanism!r}; valid: {', '.join(MECHANISMS)}")
    return create_accountant(mechanism)
