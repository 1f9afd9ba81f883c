"""Files of a sweep's privacy-utility report: the figure, the CSV and the HTML table.

Rows come from :func:`server.sweep_report.collect`: one per child run, with its final metric,
ε values and swept overrides; non-private runs (``privacy == "none"``) are reference lines.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FILE_STEM = "privacy_utility"
SEED_PARAM = "seed"
# ε axes: (column, label). eps_client only when a child ran client-level DP.
EPS_AXES = (("eps_sample_max", "sample-level ε (max over sites)"), ("eps_client", "client-level ε"))
# Points are labelled with their setting up to this many (more would be unreadable).
MAX_LABELS = 12


def setting_keys(rows: pd.DataFrame, swept: Sequence[str]) -> list[str]:
    """Swept params that vary among the private runs, seed left out (seeds are averaged)."""
    private = rows[rows["privacy"] == "dp"]
    return [k for k in swept if k != SEED_PARAM and private[k].nunique() > 1]


def points(rows: pd.DataFrame, eps: str, *, metric: str, keys: Sequence[str]) -> pd.DataFrame:
    """Private runs with a metric and an ε: one point per setting of ``keys``, mean ± std over the rest.

    Runs that differ only outside ``keys`` (their seed) are one point. Returns columns
    ``setting``, ``eps``, ``mean``, ``std`` (0 for a single run) and ``n`` (runs per point).
    """
    private = rows[(rows["privacy"] == "dp") & rows[metric].notna() & rows[eps].notna()]
    if private.empty:
        return pd.DataFrame(columns=["setting", "eps", "mean", "std", "n"])
    label = private.apply(lambda r: " ".join(f"{k}={r[k]}" for k in keys), axis=1) if keys else "all runs"
    grouped = private.assign(label=label).groupby("label", sort=False)
    out = pd.DataFrame({
        "eps": grouped[eps].mean(),
        "mean": grouped[metric].mean(),
        # Sample standard deviation over the seeds of one setting.
        "std": grouped[metric].std(ddof=1).fillna(0.0),
        "n": grouped[metric].size(),
    }).reset_index(names="setting")
    return out.sort_values("eps", kind="stable")


def reference(rows: pd.DataFrame, references: pd.DataFrame, *, metric: str) -> pd.Series:
    """Final metric of every non-private run (children tagged none and given references)."""
    both = pd.concat([rows[rows["privacy"] == "none"], references], ignore_index=True)
    return both[metric].dropna().astype(float)


def write_plot(
    rows: pd.DataFrame, references: pd.DataFrame, out_dir: Path, *, metric: str, swept: Sequence[str], title: str
) -> Path:
    """Final metric against sample-level ε (and client-level ε where present).

    Points are joined by a line when the sweep varies one setting (besides the seed); a search
    over several settings (e.g. ``hparams_search``) is drawn as a scatter.
    """
    keys = setting_keys(rows, swept)
    joined = len(keys) <= 1
    axes_wanted = [(col, label) for col, label in EPS_AXES if col == "eps_sample_max" or rows[col].notna().any()]
    fig, axes = plt.subplots(1, len(axes_wanted), figsize=(6.5 * len(axes_wanted), 4.5), squeeze=False)
    ref = reference(rows, references, metric=metric)
    for ax, (col, label) in zip(axes[0], axes_wanted):
        pts = points(rows, col, metric=metric, keys=keys)
        averaged = bool((pts["n"] > 1).any())
        if not pts.empty:
            ax.errorbar(pts["eps"], pts["mean"], yerr=pts["std"] if averaged else None, marker="o",
                        capsize=4, linestyle="-" if joined else "none",
                        label="DP-SGD runs" + (" (mean ± std over seeds)" if averaged else ""))
            if len(pts) <= MAX_LABELS:
                for _, p in pts.iterrows():
                    text = _short(p["setting"]) + (f" (n={p['n']})" if averaged else "")
                    ax.annotate(text, (p["eps"], p["mean"]), textcoords="offset points", xytext=(4, 6), fontsize=7)
            if (pts["eps"] > 0).all() and pts["eps"].max() / pts["eps"].min() > 10:
                ax.set_xscale("log")
        if not ref.empty:
            mean = float(ref.mean())
            ax.axhline(mean, color="grey", linestyle="--", label=f"non-private (privacy=none, n={len(ref)})")
            if len(ref) > 1:
                ax.axhspan(float(ref.min()), float(ref.max()), color="grey", alpha=0.15)
        if pts.empty and ref.empty:
            ax.text(0.5, 0.5, "no finished run with this ε", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel=label, ylabel=f"final {metric.upper()} (sites' test sets)", title=title if col == axes_wanted[0][0] else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out_dir / f"{FILE_STEM}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_csv(rows: pd.DataFrame, out_dir: Path) -> Path:
    """One row per child run (the ``setting`` label is left out: its params are columns)."""
    path = out_dir / f"{FILE_STEM}.csv"
    rows.drop(columns=["setting"]).to_csv(path, index=False)
    return path


def write_html(rows: pd.DataFrame, references: pd.DataFrame, out_dir: Path, *, metric: str, title: str) -> Path:
    """The table of child runs (and references) beside the figure, in one static page."""
    table = rows.drop(columns=["setting"]).to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—")
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Final {metric.upper()} on the sites' test sets against the ε each run spent. "
        "ε values are the accountants' (sample-level: the largest over sites).</p>",
        f"<img src='{FILE_STEM}.png' alt='privacy-utility figure'>",
        "<h2>Runs</h2>", table,
    ]
    if not references.empty:
        parts += ["<h2>Non-private references</h2>",
                  references.drop(columns=["setting"]).to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—")]
    parts.append("</body></html>")
    path = out_dir / f"{FILE_STEM}.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _short(setting: str) -> str:
    """``privacy.target_epsilon=2.0 seed=1`` → ``target_epsilon=2.0 seed=1`` for point labels."""
    return " ".join(part.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + part.split("=", 1)[1] if "=" in part else part
                    for part in setting.split()) or "—"
