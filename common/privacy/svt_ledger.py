"""One site's SVT ledger: the ε of every SVT release it made, kept across rounds and restarts.

Rounds compose by basic (sequential) composition of pure ε-DP mechanisms: the site's SVT ε is
the sum of its rounds' ε (Dwork & Roth 2014, Thm 3.16). The ledger is written atomically after
every release, beside the sample-level ledger, and a site refuses a round whose release would
push the sum past its budget.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from common.privacy.site_accountant import PrivacyBudgetExceeded
from common.privacy.ledger_file import save_ledger, stored_ledgers

SVT_LEDGER_FILE = "svt_ledger.json"
_SCHEMA = 1


@dataclass
class SvtLedger:
    """Per-round SVT ε of one site; ``epsilon`` is their sum."""

    site: str
    releases: list[tuple[int, float]] = field(default_factory=list)  # (server round, ε)

    @property
    def epsilon(self) -> float:
        """Cumulative SVT ε (basic composition)."""
        return float(sum(eps for _, eps in self.releases))

    def check(self, epsilon: float, *, budget: float) -> None:
        """Raise :class:`PrivacyBudgetExceeded` if one more release of ``epsilon`` exceeds ``budget``."""
        if self.epsilon + epsilon > budget * (1 + 1e-12):
            raise PrivacyBudgetExceeded(
                f"site {self.site}: an SVT release of ε={epsilon:g} would bring its SVT ε from "
                f"{self.epsilon:g} to {self.epsilon + epsilon:g}, over its budget {budget:g}"
            )

    def record(self, server_round: int, epsilon: float) -> None:
        """Append one release."""
        self.releases.append((int(server_round), float(epsilon)))

    def to_json(self) -> str:
        return json.dumps({"schema": _SCHEMA, "site": self.site, "releases": self.releases})

    @classmethod
    def from_json(cls, text: str) -> SvtLedger:
        data = json.loads(text)
        if data.get("schema") != _SCHEMA:
            raise ValueError(f"unsupported SVT ledger schema {data.get('schema')!r}")
        return cls(site=data["site"], releases=[(int(r), float(e)) for r, e in data["releases"]])

    def save(self, state_dir: str | os.PathLike[str]) -> Path:
        """Write atomically to ``state_dir/svt_ledger.json`` (a truncated ledger would reset ε)."""
        return save_ledger(self.to_json(), state_dir, SVT_LEDGER_FILE)

    @classmethod
    def restore(cls, *, site: str, state_dir: str | os.PathLike[str], cached: str | None = None) -> SvtLedger:
        """The ledger from the node-state cache and/or disk (the larger ε wins), or a new one.

        Raises
        ------
        ValueError
            If a stored ledger is unreadable or belongs to another site.
        """
        candidates = stored_ledgers(state_dir, SVT_LEDGER_FILE, cached, cls.from_json, "SVT ledger")
        if not candidates:
            return cls(site=site)
        ledger = max(candidates, key=lambda c: c.epsilon)
        if ledger.site != site:
            raise ValueError(f"SVT ledger of site {ledger.site!r} found for site {site!r}")
        return ledger
