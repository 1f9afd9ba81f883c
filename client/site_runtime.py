"""What one site does in a federated round, without Flower: the ClientApp only wires this.

The site owns its privacy: it loads its ledger (node state cache or disk), calibrates σ
once for the federation's planned rounds, refuses rounds beyond its budget, trains with
DP-SGD, saves the ledger, and reports ε and steps.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from client.evaluate import evaluate
from client.round_store import StoredUpdate, model_sha256, released_update, save_update, training_lock
from client.sparse_sharing import SparseSharing
from client.timing import timed
from client.train import dp_train, plain_train
from common.data import SiteData, build_site_data
from common.data.data_cache import CACHE_DIR as DATA_CACHE_DIR
from common.device import resolve_device
from common.federation_config import check_non_private_allowed, check_train_size, is_private, site_view
from common.models import exchanged_state, frozen_digest, initial_model, load_exchanged
from common.privacy import SiteAccountant, calibrate_noise_multiplier
from common.run_config import tracking_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOutcome:
    """A finished training round: new weights, reply metrics and the saved ledger."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float]
    ledger_json: str | None  # None: a non-private round, outside the privacy ledger


class SiteRuntime:
    """One site's data, model factory and privacy ledger.

    Parameters
    ----------
    cfg : DictConfig
        The full composed config; only this site's view of it is kept.
    site : str
        The site's name (a key of the federation's sites).
    """

    def __init__(self, cfg: DictConfig, site: str) -> None:
        self.site = site
        self.view = site_view(cfg, site)
        self.index = int(self.view.index)
        self.task = cfg.task
        self.model_cfg = cfg.model
        self.seed = int(cfg.seed)
        # model.init=runs:/... reads the initial weights from the tracking server.
        self.tracking_uri = tracking_uri(cfg.mlflow)
        self.device = resolve_device(cfg.device)
        self.show_progress = bool(cfg.simulation.show_progress)
        weights = self.task.get("class_weights")
        self.class_weights = None if weights is None else [float(w) for w in weights]
        # strategy=partial_sharing|svt: what of the update leaves the site (None: all of it).
        self.sharing = SparseSharing.for_site(cfg.strategy, self.view, seed=self.seed)

    @property
    def data(self) -> SiteData:
        """The site's datasets, built once per process (a node answers many messages).

        Raises
        ------
        ConfigError
            If δ or the batch size does not fit the number of training patients read.
        """
        data = _site_data(
            self.site,
            json.dumps(OmegaConf.to_container(self.task)),
            json.dumps(OmegaConf.to_container(self.view.data)),
            str(Path(self.view.state_dir) / DATA_CACHE_DIR),
        )
        # Real files: N is known only now; validate_config could check only configured sizes.
        check_train_size(self.view, data.num_train_patients)
        return data

    def model_from(self, state: dict[str, torch.Tensor], frozen_sha256: str | None = None) -> nn.Module:
        """The federation's initial model with the received exchanged weights loaded.

        Raises
        ------
        ValueError
            If the frozen weights differ from the server's (``frozen_sha256``), or the
            received weights are NaN/inf or do not fit the model.
        """
        with timed(self.site, "model"):
            model = initial_model(self.model_cfg, self.seed, tracking_uri=self.tracking_uri)
        if frozen_sha256 is not None and frozen_digest(model) != frozen_sha256:
            raise ValueError(
                f"site {self.site}: frozen weights differ from the server's (same model config, seed, "
                f"model.init weights ({self.model_cfg.get('init', 'seeded')}) and torch version are required everywhere)"
            )
        try:
            load_exchanged(model, state)
        except ValueError as err:
            raise ValueError(f"site {self.site}: {err}") from err
        return model

    @cached_property
    def exchanged_keys(self) -> list[str]:
        """Names of the exchanged tensors, in the order every node derives from the model config."""
        return list(exchanged_state(initial_model(self.model_cfg, self.seed, tracking_uri=self.tracking_uri)))

    def load_ledger(self, cached: str | None) -> SiteAccountant:
        """The site's ledger from the node-state cache and/or its state dir."""
        p = self.view.privacy
        return SiteAccountant.restore(
            site=self.site, mechanism=p.accountant, delta=p.delta, state_dir=self.view.state_dir, cached=cached
        )

    def steps_per_round(self) -> tuple[float, int]:
        """(Poisson sample rate q, optimizer steps per round) exactly as Opacus will run them."""
        batches = math.ceil(self.data.num_train_patients / self.view.training.batch_size)
        return 1.0 / batches, self.view.training.local_epochs * batches

    def noise_multiplier(self, ledger: SiteAccountant, *, planned_rounds: int) -> float:
        """σ for this site, fixed on first use for the whole federation.

        Calibrated once for ``planned_rounds`` rounds: re-calibrating each round would
        re-spend the budget every round while reporting only one round's ε.
        """
        if ledger.noise_multiplier is None:
            p = self.view.privacy
            q, steps = self.steps_per_round()
            if p.noise_multiplier is not None:
                ledger.noise_multiplier = float(p.noise_multiplier)
            else:
                ledger.noise_multiplier = calibrate_noise_multiplier(
                    target_epsilon=p.target_epsilon,
                    delta=p.delta,
                    sample_rate=q,
                    steps=steps * planned_rounds,
                    mechanism=p.accountant,
                )
            log.info(
                "site %s: σ=%.4f for %d rounds × %d steps at q=%.4f (budget ε=%g, δ=%g)",
                self.site, ledger.noise_multiplier, planned_rounds, steps, q, p.target_epsilon, p.delta,
            )
        return ledger.noise_multiplier

    def train_round(
        self,
        state: dict[str, torch.Tensor],
        *,
        server_round: int,
        planned_rounds: int,
        cached_ledger: str | None,
        frozen_sha256: str | None = None,
    ) -> TrainOutcome:
        """Train one round with DP-SGD and return the update and the site's privacy status.

        Raises
        ------
        PrivacyBudgetExceeded
            If this round would exceed the site's budget; nothing is trained or saved.
        NonPrivateRefused
            If ``privacy=none`` reaches a site reading real files that has not allowed it.
        """
        self._set_threads()
        model = self.model_from(state, frozen_sha256)
        self._seed_round(server_round)
        if not is_private(self.view.privacy):
            return self._train_non_private(model, server_round)
        with training_lock(self.view.state_dir):
            return self._train_private(model, state, server_round, planned_rounds, cached_ledger)

    def _train_private(
        self,
        model: nn.Module,
        state: dict[str, torch.Tensor],
        server_round: int,
        planned_rounds: int,
        cached_ledger: str | None,
    ) -> TrainOutcome:
        """A DP-SGD round, or the stored update of a round already released (under the training lock)."""
        ledger = self.load_ledger(cached_ledger)
        # Asked again for a round already trained on this global model (a resumed coordinator):
        # re-send the released update instead of spending budget twice (client/round_store.py).
        global_sha256 = model_sha256(state)
        stored = released_update(
            self.view.state_dir, server_round=server_round, model_sha256=global_sha256, ledger_steps=ledger.steps
        )
        if stored is not None:
            print(f"site {self.site}: round {server_round} was already trained on this global model; "
                  "re-sending the stored update (no new privacy cost)", file=sys.stderr, flush=True)
            return TrainOutcome(state=stored.state, metrics=stored.metrics, ledger_json=ledger.to_json())
        sigma = self.noise_multiplier(ledger, planned_rounds=planned_rounds)
        data = self.data  # read (or loaded from the site's cache) before the DP-SGD timer starts
        with warnings.catch_warnings(), timed(self.site, "dp_sgd"):
            _quiet_library_warnings(os_seeded=not self.view.privacy.reproducible_noise)
            result = dp_train(
                model,
                data.train,
                task=self.task.name,
                training=self.view.training,
                ledger=ledger,
                noise_multiplier=sigma,
                max_grad_norm=self.view.privacy.max_grad_norm,
                budget=self.view.privacy.target_epsilon,
                device=self.device,
                class_weights=self.class_weights,
                show_progress=self.show_progress,
            )
        self._log_training(server_round, result.mean_loss, result.num_examples)
        q, _ = self.steps_per_round()
        # What leaves the site (common/privacy/release_inventory.py): DP-SGD's weights and public
        # accounting. No training loss and no patient count: neither is covered by the site's ε.
        metrics = {
            # One site, one vote: DP-FedAvg accounting needs equal weights, and a count of training
            # patients would leave the site without DP.
            "uniform-weight": 1.0,
            "site-index": float(self.index),
            "eps-sample": result.epsilon,
            "steps": float(ledger.steps),
            "noise-multiplier": sigma,
            "sample-rate": q,
        }
        # The update first, then the ledger that accounts it (invariant in client/round_store.py).
        save_update(
            self.view.state_dir,
            StoredUpdate(server_round, global_sha256, result.state, metrics, ledger_steps=ledger.steps),
        )
        ledger.save(self.view.state_dir)
        return TrainOutcome(state=result.state, metrics=metrics, ledger_json=ledger.to_json())

    def _set_threads(self) -> None:
        # Per process and cheap: a deployed site runs each message in a fresh ClientApp process.
        threads = self.view.training.get("num_threads")
        if threads is not None and torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))

    def _seed_round(self, server_round: int) -> None:
        # Noise the coordinator could regenerate from the config would be no noise at all: seed
        # from the OS unless the experiment explicitly asks for reproducible noise.
        if self.view.privacy.reproducible_noise:
            torch.manual_seed(self.seed * 1_000_003 + self.index * 1009 + server_round)
        else:
            torch.manual_seed(secrets.randbits(63))

    def _log_training(self, server_round: int, mean_loss: float, num_examples: int) -> None:
        # The training loss is computed from training patients without DP: it stays in the site's log.
        line = (
            f"site {self.site}: round {server_round} mean training loss {mean_loss:.4f} "
            f"over {num_examples} training examples (kept at this site)"
        )
        if self.show_progress:
            print(line, file=sys.stderr, flush=True)
        else:
            log.info(line)

    def _train_non_private(self, model: nn.Module, server_round: int) -> TrainOutcome:
        """``privacy=none``: the reference round without DP; refused on real files unless allowed."""
        # The site's own check: in a deployment the coordinator chose privacy=none, not the hospital.
        check_non_private_allowed(self.view)
        result = plain_train(
            model,
            self.data.train,
            task=self.task.name,
            training=self.view.training,
            device=self.device,
            class_weights=self.class_weights,
            show_progress=self.show_progress,
            site=self.site,
        )
        self._log_training(server_round, result.mean_loss, result.num_examples)
        metrics = {
            # Without DP nothing protects the patients anyway; plain FedAvg weights by this count.
            "num-examples": float(result.num_examples),
            "uniform-weight": 1.0,
            "site-index": float(self.index),
            "steps": float(result.steps),
        }
        return TrainOutcome(state=result.state, metrics=metrics, ledger_json=None)

    def evaluate_round(self, state: dict[str, torch.Tensor], frozen_sha256: str | None = None) -> dict[str, float]:
        """Evaluate the global model on the site's test set."""
        self._set_threads()
        model, test = self.model_from(state, frozen_sha256), self.data.test
        with timed(self.site, "evaluate"):
            metrics = evaluate(
                model,
                test,
                task=self.task.name,
                batch_size=self.view.training.eval_batch_size,
                device=self.device,
                class_names=list(self.task.get("class_names") or []),
            )
        metrics["site-index"] = float(self.index)
        metrics["uniform-weight"] = 1.0  # present in every reply: Flower validates the weighting key
        return metrics


def _quiet_library_warnings(*, os_seeded: bool) -> None:
    """Silence, inside a ``warnings.catch_warnings()`` block, warnings that tell a site's operator nothing."""
    if os_seeded:
        # Opacus asks for secure_mode, which needs torchcsprng (no build for torch 2.14); the noise
        # seed already comes from the OS, so nobody holding the config can regenerate the noise
        # (README "Noise nobody else can regenerate"). Kept for reproducible_noise=true runs.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
    # Opacus' per-sample hooks need only the output gradient; torch warns that the first layer's
    # full backward hook fires without an input gradient (the images need none): expected, harmless.
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


# One entry per site a process serves: a deployed SuperNode serves one site, a simulation actor
# serves its share of all sites (1000 small sites: a few MB). A smaller cache made every message
# of a large federation rebuild its site's data (bench/scale.py).
@lru_cache(maxsize=4096)
def _site_data(site: str, task_json: str, data_json: str, cache_dir: str) -> SiteData:
    with timed(site, "data"):
        # A deployed ClientApp process answers one message: the site's disk cache saves re-reading
        # and re-decoding every file each time (common/data/data_cache.py).
        data = build_site_data(
            OmegaConf.create(json.loads(task_json)), OmegaConf.create(json.loads(data_json)), cache_dir=Path(cache_dir)
        )
    # Printed, not logged: simulation workers forward stdout/stderr but drop INFO logs, and a
    # site's operator must see what was read and how many bad files were skipped.
    print(f"site {site}: {data.summary}", file=sys.stderr, flush=True)
    return data

