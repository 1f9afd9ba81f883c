"""Flower ClientApp of a hospital: turns Flower messages into site train/evaluate calls.

The same app runs in simulation (site chosen by ``partition-id``) and at a hospital's
SuperNode (site chosen by ``--node-config 'site="hospital_a"'``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from omegaconf import DictConfig

if TYPE_CHECKING:
    from client.site_runtime import SiteRuntime

from client.error_replies import sanitising_mod
from client.secure_messages import fit_res_content, is_secure_fit, read_fit_ins, secure_aggregation_mod
from client.timing import timed, timing_mod
from common.federation_config import ConfigError, site_names
from common.run_config import config_from_run_config

LEDGER_KEY = "privacy-ledger"
SVT_LEDGER_KEY = "svt-ledger"


def site_for_node(cfg: DictConfig, node_config: dict) -> str:
    """The site this node is: ``site`` from its node config, else its simulation partition."""
    if "site" in node_config:
        return str(node_config["site"])
    names = site_names(cfg)
    if "partition-id" not in node_config:
        raise ConfigError("node config has neither 'site' nor 'partition-id'; start the SuperNode with "
                          "--node-config 'site=\"<name>\"'")
    if int(node_config.get("num-partitions", len(names))) != len(names):
        raise ConfigError(
            f"simulation has {node_config['num-partitions']} nodes but the federation has {len(names)} sites"
        )
    return names[int(node_config["partition-id"])]


def build_client_app(
    load_config: Callable[[Context], DictConfig], *, mods: Sequence[Mod] = (), outer_mods: Sequence[Mod] = ()
) -> ClientApp:
    """A ClientApp whose handlers compose the config with ``load_config(context)``.

    Every failure leaves as ``site <name>: <kind>`` (``client/error_replies.py``), its details
    staying in the site's log. Training messages of SecAgg+ rounds go through Flower's
    ``secaggplus_mod``. Extra ``mods`` run inside it, next to the handlers (they see plain
    updates); ``outer_mods`` run outside everything, the error sanitiser included (they see
    exactly what leaves the site, e.g. masked vectors, key shares and sanitised errors).
    """

    def site_of(context: Context) -> str:
        # Called while handling a failure: a broken config must not hide which site failed.
        try:
            return site_for_node(load_config(context), context.node_config)
        except Exception:  # noqa: BLE001
            return f"partition {context.node_config.get('partition-id', '?')}"

    # timing_mod is outermost and does nothing unless $PRIVMED_TIMING_LOG is set (bench/deploy_round.py).
    app = ClientApp(mods=[timing_mod, *outer_mods, sanitising_mod(site_of), secure_aggregation_mod, *mods])
    # One runtime per (config, site) per process: resolving a site's view of a federation of
    # hundreds of sites costs ~0.3 s, and a simulation process serves many nodes and rounds.
    runtimes: dict[tuple[int, int | str], tuple[DictConfig, SiteRuntime]] = {}

    def runtime(context: Context) -> SiteRuntime:
        # Imported with the first train/evaluate message, not with the app: a deployed SuperNode
        # starts a process per message, and SecAgg+'s key stages need neither torch nor Opacus.
        node = context.node_config
        site = str(node.get("site", f"partition-{node.get('partition-id', '?')}"))
        with timed(site, "imports"):
            from client.site_runtime import SiteRuntime
        with timed(site, "config"):
            cfg = load_config(context)
            key = (id(cfg), node["site"] if "site" in node else int(node["partition-id"]))
            if key not in runtimes:
                runtimes[key] = (cfg, SiteRuntime(cfg, site_for_node(cfg, node)))  # holding cfg keeps its id unique
        return runtimes[key][1]

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = runtime(context)
        # SecAgg+ rounds arrive as legacy FitIns (the only format Flower's SecAgg+ speaks).
        secure = is_secure_fit(msg.content)
        if secure:
            state, config = read_fit_ins(msg.content, site.exchanged_keys)
        else:
            state, config = msg.content["arrays"].to_torch_state_dict(), msg.content["config"]
        cached = context.state[LEDGER_KEY]["json"] if LEDGER_KEY in context.state else None
        cached_svt = context.state[SVT_LEDGER_KEY]["json"] if SVT_LEDGER_KEY in context.state else None
        # A resumed coordinator counts its rounds from 1 again; round-offset says where it resumed.
        server_round = int(config["server-round"]) + int(config.get("round-offset", 0))

        # A refusal (budget, SVT budget, privacy=none) raises; the sanitising mod turns it into a public error.
        # strategy=svt: refused before training if the release would exceed the SVT budget.
        svt_ledger = site.sharing.check_budget(state, cached_svt, server_round=server_round) if site.sharing is not None else None
        outcome = site.train_round(
            state,
            server_round=server_round,
            planned_rounds=int(config["num-rounds"]),
            cached_ledger=cached,
            frozen_sha256=str(config["frozen-sha256"]),
        )
        if outcome.ledger_json is not None:
            context.state[LEDGER_KEY] = ConfigRecord({"json": outcome.ledger_json})
        if not secure and site.sharing is not None:
            release = site.sharing.release(outcome.state, state, server_round=server_round, ledger=svt_ledger)
            if release.ledger_json is not None:
                context.state[SVT_LEDGER_KEY] = ConfigRecord({"json": release.ledger_json})
            arrays = ArrayRecord(array_dict={k: Array(v) for k, v in release.arrays.items()})
            content = RecordDict({"arrays": arrays, "metrics": MetricRecord({**outcome.metrics, **release.metrics})})
            return Message(content=content, reply_to=msg)
        if not secure:
            content = RecordDict(
                {"arrays": ArrayRecord(torch_state_dict=outcome.state), "metrics": MetricRecord(outcome.metrics)}
            )
            return Message(content=content, reply_to=msg)
        from client.secure_update import secure_update  # torch: imported where it is needed (see runtime)

        clip = float(config.get("update-clip-norm", 0.0))
        update, _norm = secure_update(
            outcome.state,
            state,
            clip_norm=clip if clip > 0 else None,
            clipping_range=float(config["clipping-range"]),
            site=site.site,
        )
        # The update's norm stays here: it is one site's statistic, which SecAgg+ exists to hide.
        return Message(content=fit_res_content(update, outcome.metrics), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = runtime(context).evaluate_round(
            msg.content["arrays"].to_torch_state_dict(), str(msg.content["config"]["frozen-sha256"])
        )
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


# Entry point for `flwr run` / SuperNodes: config composed from the run config.
app = build_client_app(config_from_run_config)
