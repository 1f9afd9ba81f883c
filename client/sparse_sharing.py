"""What a site shares of its DP-SGD update under ``strategy=partial_sharing`` or ``strategy=svt``.

Pure numpy (no Flower): the ClientApp only packs what :meth:`SparseSharing.release` returns.

- ``partial_sharing``: the ⌈fraction · d⌉ coordinates of Δ with the largest magnitude, exact.
  No guarantee beyond DP-SGD's: which coordinates and their values are functions of the DP-SGD
  output (post-processing), nothing more.
- ``svt``: Li et al.'s selection and release with the sparse vector technique
  (:mod:`common.privacy.sparse_vector`), an extra ε-DP guarantee per round on the site's
  update, accounted in the site's SVT ledger; the site refuses a round whose release would
  exceed ``strategy.svt.max_epsilon`` (or its own site file's ``privacy.svt_max_epsilon``).

Asked again for a round it already released on the same global model (a resumed coordinator,
see ``client/round_store.py``), an SVT site re-sends the stored release instead of drawing new
noise: a second, independently noised release of the same update would cost ε again. As there,
the release is written before the ledger that accounts it and re-used only once accounted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from omegaconf import DictConfig

from client.round_store import model_sha256
from common.atomic_file import atomic_write
from common.privacy.sparse_vector import SvtScales, noise_scales, sparse_vector, split_epsilon, svt_epsilon
from common.privacy.svt_ledger import SvtLedger
from common.sparse_update import encode, flat_delta, is_sparse, num_shared, top_fraction


@dataclass(frozen=True)
class SparseRelease:
    """What leaves the site: the sparse update's arrays, reply metrics, and the SVT ledger."""

    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]
    ledger_json: str | None  # None for partial sharing (no SVT ledger)


class SparseSharing:
    """A site's sparse-sharing settings and SVT ledger.

    Parameters
    ----------
    strategy_cfg : DictConfig
        ``cfg.strategy`` (``partial_sharing`` or ``svt``).
    view : DictConfig
        The site's view (name, index, privacy, state_dir).
    seed : int
        The experiment seed (used only with ``privacy.reproducible_noise``).
    """

    def __init__(self, strategy_cfg: DictConfig, view: DictConfig, *, seed: int) -> None:
        self.kind = str(strategy_cfg.name)
        self.fraction = float(strategy_cfg.fraction)
        self.site, self.index, self.state_dir = str(view.name), int(view.index), str(view.state_dir)
        self.reproducible = bool(view.privacy.get("reproducible_noise", False))
        self.seed = seed
        self.svt = strategy_cfg.get("svt") if self.kind == "svt" else None
        if self.svt is not None:
            own = view.privacy.get("svt_max_epsilon")  # the hospital's own budget wins
            self.budget = float(own if own is not None else self.svt.max_epsilon)

    @classmethod
    def for_site(cls, strategy_cfg: DictConfig, view: DictConfig, *, seed: int) -> SparseSharing | None:
        """The site's sparse sharing, or None for strategies that send the whole update."""
        return cls(strategy_cfg, view, seed=seed) if is_sparse(strategy_cfg) else None

    def round_epsilon(self, size: int) -> float:
        """SVT ε of one release for a model of ``size`` coordinates (from the noise scales)."""
        c = num_shared(self.fraction, size)
        return svt_epsilon(self.scales(size), gamma=float(self.svt.gamma), c=c)

    def scales(self, size: int) -> SvtScales:
        """Laplace scales of one release: ε split per Lyu et al., c from ``fraction`` and ``size``."""
        c = num_shared(self.fraction, size)
        eps1, eps2, eps3 = split_epsilon(float(self.svt.epsilon), c=c, value_share=float(self.svt.value_share))
        return noise_scales(gamma=float(self.svt.gamma), c=c, eps1=eps1, eps2=eps2, eps3=eps3)

    def check_budget(
        self, received: dict[str, torch.Tensor], cached: str | None, *, server_round: int
    ) -> SvtLedger | None:
        """Before training: the SVT ledger, or :class:`PrivacyBudgetExceeded` if this round's release
        would exceed the budget (checked first, so no DP-SGD budget is spent on a refused round)."""
        if self.svt is None:
            return None
        ledger = SvtLedger.restore(site=self.site, state_dir=self.state_dir, cached=cached)
        if self._stored(server_round, received, ledger) is not None:
            return ledger  # a re-sent release costs nothing
        ledger.check(self.round_epsilon(_size(received)), budget=self.budget)
        return ledger

    def release(
        self,
        trained: dict[str, torch.Tensor],
        received: dict[str, torch.Tensor],
        *,
        server_round: int,
        ledger: SvtLedger | None,
    ) -> SparseRelease:
        """Select, perturb (SVT) and encode the site's update ``trained − received``."""
        delta = flat_delta(_numpy(trained), _numpy(received))
        metrics: dict[str, float] = {}
        if self.svt is None:
            indices = top_fraction(delta, self.fraction)
            values = delta[indices]
        else:
            stored = self._stored(server_round, received, ledger)
            if stored is not None:
                print(f"site {self.site}: round {server_round} was already released on this global model; "
                      "re-sending the stored SVT release (no new SVT cost)", flush=True)
                return stored
            c = num_shared(self.fraction, delta.size)
            indices, values = sparse_vector(
                delta,
                gamma=float(self.svt.gamma),
                tau=float(self.svt.tau),
                c=c,
                scales=self.scales(delta.size),
                max_passes=int(self.svt.max_passes),
                rng=self._rng(server_round),
            )
            ledger.record(server_round, self.round_epsilon(delta.size))
            metrics["eps-svt"] = ledger.epsilon
        metrics["shared-coordinates"] = float(indices.size)
        arrays = encode(indices, values, size=delta.size, fraction=self.fraction)
        if ledger is None:
            return SparseRelease(arrays=arrays, metrics=metrics, ledger_json=None)
        # The release first, then the ledger that accounts it (see the module docstring).
        _save_npz(Path(self.state_dir) / RELEASE_FILE, arrays, metrics, server_round, model_sha256(received))
        ledger.save(self.state_dir)
        return SparseRelease(arrays=arrays, metrics=metrics, ledger_json=ledger.to_json())

    def _stored(self, server_round: int, received: dict[str, torch.Tensor], ledger: SvtLedger) -> SparseRelease | None:
        """The accounted release of this round on this global model, if there is one."""
        path = Path(self.state_dir) / RELEASE_FILE
        if not path.is_file() or not ledger.releases or ledger.releases[-1][0] != server_round:
            return None
        with np.load(path) as data:
            if int(data["server_round"]) != server_round or str(data["model_sha256"]) != model_sha256(received):
                return None
            arrays = {k.removeprefix("array."): data[k] for k in data.files if k.startswith("array.")}
            metrics = {k.removeprefix("metric."): float(data[k]) for k in data.files if k.startswith("metric.")}
        return SparseRelease(arrays=arrays, metrics=metrics, ledger_json=ledger.to_json())

    def _rng(self, server_round: int) -> np.random.Generator:
        # As for DP-SGD: noise the coordinator could regenerate from the config is no noise.
        if self.reproducible:
            return np.random.default_rng([self.seed, self.index, server_round, 7919])
        return np.random.default_rng(secrets.randbits(128))


RELEASE_FILE = "last_svt_release.npz"


def _save_npz(path: Path, arrays: dict[str, np.ndarray], metrics: dict[str, float], server_round: int, sha: str) -> None:
    """Write atomically (temporary file, fsync, rename)."""
    with atomic_write(path, "wb") as handle:
        np.savez(
            handle,
            server_round=np.int64(server_round),
            model_sha256=np.str_(sha),
            **{f"array.{k}": v for k, v in arrays.items()},
            **{f"metric.{k}": np.float64(v) for k, v in metrics.items()},
        )


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _size(state: dict[str, torch.Tensor]) -> int:
    return int(sum(v.numel() for v in state.values()))
