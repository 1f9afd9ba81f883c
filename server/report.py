"""Human-readable results of a federation: a terminal table and a progress plot."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def summary_table(rows: list[dict[str, float]], *, sites: list[str], metric: str) -> Table:
    """One line per round: task metric, loss, ε of each site, client-level ε when on."""
    client_dp = any("eps_client" in r for r in rows)
    show_sites = sites if len(sites) <= 6 else []
    table = Table(title=f"privmed federation: {len(sites)} sites", header_style="bold")
    table.add_column("round", justify="right")
    table.add_column(metric.upper(), justify="right")
    table.add_column("eval loss", justify="right")
    table.add_column("sites in sum", justify="right")  # how many sites' updates the round's sum held
    for site in show_sites:
        table.add_column(f"ε {site}", justify="right")
    table.add_column("ε sample (max)", justify="right")
    if client_dp:
        table.add_column("ε client", justify="right")
    for r in rows:
        cells = [str(int(r["round"])), _fmt(r.get(metric)), _fmt(r.get("loss")), str(int(r.get("sites_trained", 0)))]
        cells += [_fmt(r.get(f"site.{s}.eps_sample"), 2) for s in show_sites]
        cells.append(_fmt(r.get("eps_sample_max"), 2))
        if client_dp:
            cells.append(_fmt(r.get("eps_client"), 2))
        table.add_row(*cells)
    return table


def print_summary(
    rows: list[dict[str, float]],
    *,
    sites: list[str],
    metric: str,
    stop_reason: str | None,
    failures: list[str] = (),
) -> str:
    """Print the table, each site that failed or refused (one line each) and why the run stopped early."""
    # Wide enough for a column per site even when stdout is a log file, not a terminal.
    console = Console(record=True, width=max(100, 40 + 14 * min(len(sites), 6)))
    console.print(summary_table(rows, sites=sites, metric=metric))
    if failures:
        console.print("[bold yellow]Sites that failed or refused:[/]")
        for line in failures:
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    if stop_reason:
        console.print(f"[bold yellow]Stopped early:[/] {stop_reason}")
    return console.export_text()


def progress_plot(rows: list[dict[str, float]], *, metric: str, path: Path) -> Path:
    """Task metric and privacy spent per round, side by side, saved as PNG."""
    rounds = [r["round"] for r in rows]
    fig, (ax_metric, ax_eps) = plt.subplots(1, 2, figsize=(10, 4))
    ax_metric.plot(rounds, [r.get(metric, math.nan) for r in rows], marker="o")
    ax_metric.set(xlabel="round", ylabel=metric.upper(), title=f"Federated {metric.upper()}")
    ax_metric.grid(alpha=0.3)
    ax_eps.plot(rounds, [r.get("eps_sample_max", math.nan) for r in rows], marker="o", label="sample-level ε (max site)")
    if any("eps_client" in r for r in rows):
        ax_eps.plot(rounds, [r.get("eps_client", math.nan) for r in rows], marker="s", label="client-level ε")
    ax_eps.set(xlabel="round", ylabel="ε", title="Privacy spent (cumulative)")
    ax_eps.legend()
    ax_eps.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
