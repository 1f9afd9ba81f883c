"""Bounded wait for the federation's sites to connect (Flower's own samplers wait forever)."""

from __future__ import annotations

import logging
import time

from flwr.serverapp import Grid

from server.round_tracker import FederationStopped

log = logging.getLogger(__name__)


def wait_for_sites(grid: Grid, num_sites: int, *, timeout_s: float, poll_s: float = 1.0) -> None:
    """Return once ``num_sites`` nodes are connected.

    Raises
    ------
    FederationStopped
        If fewer than ``num_sites`` nodes are connected after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    last_logged = -1
    while (connected := len(list(grid.get_node_ids()))) < num_sites:
        if time.monotonic() > deadline:
            raise FederationStopped(
                f"only {connected} of {num_sites} sites connected within {timeout_s:g}s "
                "(simulation.round_timeout_s); check that every hospital's SuperNode is running"
            )
        if connected != last_logged:
            log.info("waiting for sites: %d of %d connected", connected, num_sites)
            last_logged = connected
        time.sleep(poll_s)
