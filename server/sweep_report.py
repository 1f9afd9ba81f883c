"""A sweep's privacy-utility report: final AUC/Dice against ε, one row per child run.

Read from MLflow alone (the parent run's children, their params, metrics and run times), so a
sweep run on another machine that logged to the same tracking server gets the same report.
The files (``privacy_utility.png``, ``.csv``, ``.html``) are drawn by :mod:`server.sweep_plot`.

Only test-set metrics (AUC/Dice on the sites' test patients) and accounted ε values enter the
report: nothing here is computed from training patients.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from server.mlflow_sink import PRIVACY_TAG, SWEEP_TAG
from server.sweep_plot import write_csv, write_html, write_plot

REPORT_DIR = "report"
PARENT_TAG = "mlflow.parentRunId"
STOP_REASON_TAG = "privmed.stop_reason"
# Per-site values each site calibrates (σ, sampling rate) differ with ε without being swept.
DERIVED_PARAM_PREFIXES = ("site.",)
# Metrics a privmed run may end with (task.metric), when a run does not say which.
TASK_METRICS = ("auc", "dice")
# search_runs page size (MLflow's maximum is 50000; a sweep is far smaller).
_PAGE = 1000


class ReportError(Exception):
    """The report cannot be made: unknown run, no child runs, or an unusable reference run."""


@dataclass(frozen=True)
class SweepReport:
    """What a report holds: the table, the non-private references and where the files went.

    ``rows`` has one row per child run: ``run_id``, ``status``, ``stop_reason``, ``privacy`` (dp | none),
    ``setting`` (the swept overrides as one string), one column per swept param, the final
    metric (named after it), ``eps_sample_max``, ``eps_client``, ``eps_svt``, ``delta``, ``rounds`` and
    ``wall_time_s``. ``references`` has the same columns for non-private runs given by id.
    """

    parent_run_id: str
    metric: str
    swept: list[str]
    rows: pd.DataFrame
    references: pd.DataFrame
    files: list[str] = field(default_factory=list)


def child_runs(client: MlflowClient, parent_run_id: str) -> list[Run]:
    """The parent's child runs (tag ``mlflow.parentRunId``), oldest first.

    Raises
    ------
    ReportError
        If there is no such run, or it has no child runs.
    """
    parent = _get_run(client, parent_run_id, role="parent run")
    children: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=_PAGE, page_token=token, order_by=["attributes.start_time ASC"],
        )
        children += list(page)
        token = page.token
        if not token:
            break
    if not children:
        sweep = parent.data.tags.get(SWEEP_TAG)
        hint = f" (sweep {sweep})" if sweep else " (a single run, not a sweep's parent?)"
        raise ReportError(f"run {parent_run_id}{hint} has no child runs: the report needs the parent run of a sweep")
    return children


def swept_params(runs: Sequence[Run]) -> list[str]:
    """Params whose value differs between ``runs``: the sweep's overrides.

    Left out: per-site calibrated values (``site.*``) and values naming the run's own sweep job
    directory (state and data roots), which differ between jobs by construction.
    """
    keys = sorted(set().union(*(r.data.params for r in runs)))
    swept = []
    for key in keys:
        if key.startswith(DERIVED_PARAM_PREFIXES):
            continue
        values = [r.data.params.get(key) for r in runs]
        if len(set(values)) < 2:
            continue
        if all(v is not None and SWEEP_TAG in r.data.tags and r.data.tags[SWEEP_TAG] in v for r, v in zip(runs, values)):
            continue
        swept.append(key)
    return swept


def task_metric(runs: Sequence[Run]) -> str:
    """The task metric the runs share (param ``task.metric``: auc or dice).

    Raises
    ------
    ReportError
        If the runs disagree or none says which.
    """
    named = {r.data.params["task.metric"] for r in runs if "task.metric" in r.data.params}
    if not named:
        named = {m for r in runs for m in TASK_METRICS if m in r.data.metrics}
    if len(named) != 1:
        found = ", ".join(sorted(named)) or "none"
        raise ReportError(f"the runs must share one task metric (param task.metric), found: {found}")
    return named.pop()


def run_row(client: MlflowClient, run: Run, *, metric: str, swept: Sequence[str]) -> dict[str, object]:
    """One report row: swept overrides, final metric (last value), ε values, rounds, wall time."""
    params, metrics = run.data.params, run.data.metrics
    history = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, metric))
    end = run.info.end_time
    row: dict[str, object] = {
        "run_id": run.info.run_id,
        "status": run.info.status,
        # Why a run ended before its planned rounds (budget, failed sites), as the run tagged it.
        "stop_reason": run.data.tags.get(STOP_REASON_TAG, ""),
        "privacy": run.data.tags.get(PRIVACY_TAG, "dp"),
        "setting": " ".join(f"{k}={params.get(k, '—')}" for k in swept),
    }
    row.update({k: params.get(k, "") for k in swept})
    row.update({
        metric: history[-1][2] if history else math.nan,
        "eps_sample_max": metrics.get("eps_sample_max", math.nan),
        "eps_client": metrics.get("eps_client", math.nan),
        # strategy=svt: the sites' sparse-selection ε (max over sites), spent on top of eps_sample_max.
        "eps_svt": metrics.get("eps_svt", math.nan),
        "delta": float(params["privacy.delta"]) if row["privacy"] == "dp" and "privacy.delta" in params else math.nan,
        # Rounds completed: a run stopped by its privacy budget has fewer than planned.
        "rounds": history[-1][0] if history else 0,
        "wall_time_s": (end - run.info.start_time) / 1000 if end else math.nan,
    })
    return row


def collect(client: MlflowClient, parent_run_id: str, *, references: Sequence[str] = ()) -> SweepReport:
    """Read the sweep and its non-private references from MLflow into a :class:`SweepReport`.

    Raises
    ------
    ReportError
        Unknown parent or reference run, a parent without children, a reference that is
        not tagged ``privmed.privacy=none``, or children without a common task metric.
    """
    children = child_runs(client, parent_run_id)
    reference_runs = [_get_run(client, ref, role="reference run") for ref in references]
    for ref in reference_runs:
        if ref.data.tags.get(PRIVACY_TAG) != "none":
            raise ReportError(
                f"reference run {ref.info.run_id} is tagged {PRIVACY_TAG}={ref.data.tags.get(PRIVACY_TAG, '(unset)')}, "
                "not none: a reference must be a non-private run (privmed-simulate privacy=none)"
            )
    metric = task_metric([*children, *reference_runs])
    swept = swept_params(children)
    rows = pd.DataFrame([run_row(client, r, metric=metric, swept=swept) for r in children])
    rows = rows.sort_values(["eps_sample_max", "setting"], na_position="last", kind="stable").reset_index(drop=True)
    refs = pd.DataFrame([run_row(client, r, metric=metric, swept=[]) for r in reference_runs], columns=rows.columns)
    return SweepReport(parent_run_id=parent_run_id, metric=metric, swept=swept, rows=rows, references=refs)


def build_report(
    client: MlflowClient, parent_run_id: str, *, out_dir: str | Path, references: Sequence[str] = ()
) -> SweepReport:
    """Write ``privacy_utility.{png,csv,html}`` of a sweep into ``out_dir``; ``files`` lists them."""
    report = collect(client, parent_run_id, references=references)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_plot(report.rows, report.references, out, metric=report.metric, swept=report.swept, title=_title(report)),
        write_csv(report.rows, out),
        write_html(report.rows, report.references, out, metric=report.metric, title=_title(report)),
    ]
    return SweepReport(**{**report.__dict__, "files": [str(f) for f in files]})


def log_report(client: MlflowClient, parent_run_id: str, *, references: Sequence[str] = ()) -> SweepReport:
    """Build the report and log it to the parent run under ``report/``; ``files`` are artifact paths."""
    with tempfile.TemporaryDirectory() as tmp:
        report = build_report(client, parent_run_id, out_dir=tmp, references=references)
        client.log_artifacts(parent_run_id, tmp, REPORT_DIR)
    return SweepReport(**{**report.__dict__, "files": [f"{REPORT_DIR}/{Path(f).name}" for f in report.files]})


def _get_run(client: MlflowClient, run_id: str, *, role: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise ReportError(f"no {role} {run_id!r} in the MLflow store at {client.tracking_uri}") from err


def _title(report: SweepReport) -> str:
    return f"privacy-utility of sweep {report.parent_run_id[:8]} ({len(report.rows)} runs)"
