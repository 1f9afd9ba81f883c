"""One site's sample-level privacy ledger, kept for the whole federation.

A site has one accountant across all rounds and restarts: its history of
(noise multiplier, sample rate, steps) is appended to by every optimizer step and
written to disk after every round. ε is always computed from the full history.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from opacus.accountants import IAccountant

from common.privacy.mechanisms import new_accountant
from common.privacy.ledger_file import save_ledger, stored_ledgers

LEDGER_FILE = "privacy_ledger.json"
_SCHEMA = 1


class PrivacyBudgetExceeded(RuntimeError):
    """A site refused to train because the round would exceed its privacy budget.

    ``epsilon``, ``projected`` and ``budget`` are kept as numbers: they are public accounting,
    and the only detail a refusal sends to the coordinator (``client/error_replies.py``).
    """

    def __init__(
        self, message: str, *, epsilon: float | None = None, projected: float | None = None, budget: float | None = None
    ) -> None:
        super().__init__(message)
        self.epsilon, self.projected, self.budget = epsilon, projected, budget


@dataclass
class SiteAccountant:
    """Cumulative sample-level DP accounting of one site.

    Parameters
    ----------
    site : str
        Site name, for messages.
    mechanism : str
        Opacus accountant: ``rdp``, ``prv`` or ``gdp``.
    delta : float
        δ at which ε is reported.
    history : list of (float, float, int)
        (noise multiplier, sample rate, steps) entries, oldest first.
    noise_multiplier : float or None
        σ fixed for this site's whole participation once calibrated.
    """

    site: str
    mechanism: str
    delta: float
    history: list[tuple[float, float, int]] = field(default_factory=list)
    noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        new_accountant(self.mechanism)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    @property
    def steps(self) -> int:
        """Optimizer steps accounted so far."""
        return sum(int(s) for _, _, s in self.history)

    def epsilon(self) -> float:
        """Cumulative ε at ``delta`` over the whole history (0 before any step)."""
        return self._epsilon_of(self.history)

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε if ``steps`` more steps with (σ, q) were taken; the ledger is not changed."""
        return self._epsilon_of([*self.history, (noise_multiplier, sample_rate, steps)])

    def check_budget(self, *, budget: float, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Return the projected ε, or raise if it would exceed ``budget``.

        Raises
        ------
        PrivacyBudgetExceeded
            With the current and projected ε and the budget.
        """
        projected = self.epsilon_after(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        if projected > budget:
            raise PrivacyBudgetExceeded(
                f"site {self.site}: training {steps} more steps would raise ε from "
                f"{self.epsilon():.3f} to {projected:.3f}, above its budget ε={budget:g} "
                f"(δ={self.delta:g}); refusing this round",
                epsilon=self.epsilon(),
                projected=projected,
                budget=budget,
            )
        return projected

    def opacus_accountant(self) -> IAccountant:
        """A fresh Opacus accountant pre-loaded with this ledger's history.

        Attach it to the PrivacyEngine so every optimizer step is accounted; read its
        history back with :meth:`absorb` after training.
        """
        accountant = new_accountant(self.mechanism)
        accountant.history = list(self.history)
        return accountant

    def absorb(self, accountant: IAccountant) -> None:
        """Take the history of an accountant created by :meth:`opacus_accountant`.

        Raises
        ------
        ValueError
            If the accountant's history does not extend this ledger (it must never shrink).
        """
        new = [(float(s), float(q), int(n)) for s, q, n in accountant.history]
        if sum(n for _, _, n in new) < self.steps:
            raise ValueError(f"site {self.site}: accountant history lost steps ({len(new)} entries)")
        self.history = new

    # -- persistence -----------------------------------------------------------------
    def to_json(self) -> str:
        """Serialise the ledger."""
        return json.dumps(
            {
                "schema": _SCHEMA,
                "site": self.site,
                "mechanism": self.mechanism,
                "delta": self.delta,
                "noise_multiplier": self.noise_multiplier,
                "history": [list(h) for h in self.history],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> SiteAccountant:
        """Parse a ledger written by :meth:`to_json`."""
        data = json.loads(text)
        if data.get("schema") != _SCHEMA:
            raise ValueError(f"unsupported privacy ledger schema {data.get('schema')!r}")
        return cls(
            site=data["site"],
            mechanism=data["mechanism"],
            delta=float(data["delta"]),
            history=[(float(s), float(q), int(n)) for s, q, n in data["history"]],
            noise_multiplier=data["noise_multiplier"],
        )

    def save(self, state_dir: str | os.PathLike[str]) -> Path:
        """Write the ledger atomically to ``state_dir/privacy_ledger.json``.

        Written to a temporary file and renamed, so a crash mid-write never leaves a
        truncated ledger (which would reset the site's ε).
        """
        return save_ledger(self.to_json(), state_dir, LEDGER_FILE)

    @classmethod
    def restore(
        cls, *, site: str, mechanism: str, delta: float, state_dir: str | os.PathLike[str], cached: str | None = None
    ) -> SiteAccountant:
        """Load the site's ledger from the node state cache and/or disk, or start a new one.

        When both exist the one with more accounted steps wins: losing steps would
        understate ε, keeping extra ones only overstates it.

        Raises
        ------
        ValueError
            If a stored ledger belongs to another site or uses other δ/accountant.
        """
        candidates = stored_ledgers(state_dir, LEDGER_FILE, cached, cls.from_json, "privacy ledger")
        if not candidates:
            return cls(site=site, mechanism=mechanism, delta=delta)
        ledger = max(candidates, key=lambda c: c.steps)
        if (ledger.site, ledger.mechanism, ledger.delta) != (site, mechanism, delta):
            raise ValueError(
                f"privacy ledger for {ledger.site!r} ({ledger.mechanism}, δ={ledger.delta:g}) does not match "
                f"site {site!r} ({mechanism}, δ={delta:g}); use a fresh state_dir for a new configuration"
            )
        return ledger

    def _epsilon_of(self, history: list[tuple[float, float, int]]) -> float:
        return _epsilon(self.mechanism, tuple(tuple(h) for h in history), self.delta)


@lru_cache(maxsize=256)
def _epsilon(mechanism: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """ε of a history; cached because RDP over fractional orders costs ~0.2 s a call and the
    same history is asked for by the budget check, the report and the next round."""
    if not history:
        return 0.0
    accountant = new_accountant(mechanism)
    accountant.history = [tuple(h) for h in history]
    return float(accountant.get_epsilon(delta=delta))
