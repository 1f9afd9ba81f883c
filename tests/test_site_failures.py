"""The final summary names each site that failed or refused, with one line of reason."""

from __future__ import annotations

import pytest

from server.report import print_summary
from server.server_app import FederationReport
from server.simulate import exit_status
from server.site_failures import SiteFailures, one_line

SITES = ["hospital_a", "hospital_b"]
# What Flower's simulation engine makes of an exception escaping a ClientApp (vce_api.py).
FLOWER_WRAPPED = (
    "<class 'flwr.clientapp.exception.ClientAppException'>:<'\n"
    "Exception ClientAppException occurred. Message: \n"
    "Traceback (most recent call last):\n"
    '  File "client/site_runtime.py", line 80, in data\n'
    "common.data.errors.DataError: site hospital_b: DataError'>"
)


@pytest.mark.parametrize(
    "reason,expected",
    [
        ("site hospital_b: DataError", "site hospital_b: DataError"),
        (FLOWER_WRAPPED, "site hospital_b: DataError"),
        ("site hospital_a: budget refused (ε 2.500 would become 3.200 > budget 3)",
         "site hospital_a: budget refused (ε 2.500 would become 3.200 > budget 3)"),
        ("Traceback (most recent call last):\n  File x\nRuntimeError: boom", "RuntimeError: boom"),
        ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException occurred. "
         "Message: /data/x.jpeg: unreadable image'>", "/data/x.jpeg: unreadable image"),
        ("", "failed (no reason given)"),
        ("x" * 500, "x" * 159 + "…"),
    ],
)
def test_one_line_keeps_the_sites_own_line(reason, expected):
    assert one_line(reason) == expected


def test_failures_name_the_site_rounds_and_latest_reason():
    failures = SiteFailures(SITES, round_offset=2)
    failures.record(11, "1", FLOWER_WRAPPED)
    failures.record(11, "2", "site hospital_b: DataError")
    failures.record(12, "2", "no reply within 30s (node lost or too slow)")
    assert failures.lines() == [
        "hospital_b (rounds 3, 4): site hospital_b: DataError",
        "node 12 (round 4): no reply within 30s (node lost or too slow)",
    ]
    restored = SiteFailures(SITES)
    restored.restore(failures.to_json())
    assert restored.lines() == failures.lines()


def test_summary_lists_failed_sites_and_why_the_run_stopped():
    rows = [{"round": 1.0, "auc": 0.7, "sites_trained": 1.0}]
    text = print_summary(
        rows, sites=SITES, metric="auc", stop_reason="no site trained in round 2",
        failures=["hospital_b (round 1): site hospital_b: DataError"],
    )
    assert "Sites that failed or refused:" in text
    assert "hospital_b (round 1): site hospital_b: DataError" in text
    assert "Stopped early: no site trained in round 2" in text
    assert "failed" not in print_summary(rows, sites=SITES, metric="auc", stop_reason=None)
    long_line = "hospital_b (round 1): " + "x" * 150
    assert long_line in print_summary(rows, sites=SITES, metric="auc", stop_reason=None, failures=[long_line])


@pytest.mark.parametrize(
    "rows,stop_reason,status",
    [
        (2, None, 0),  # every planned round, whatever sites dropped on the way
        (2, "no site trained in round 2", 1),  # the last round trained nobody
        (1, "the next round would exceed client-level max_epsilon", 1),
        (1, None, 1),  # fewer rounds than planned without a stated reason
    ],
)
def test_exit_status_says_whether_the_planned_rounds_completed(rows, stop_reason, status):
    report = FederationReport(
        rows=[{"round": float(r)} for r in range(1, rows + 1)], stop_reason=stop_reason, planned_rounds=2,
        failures=["hospital_b (round 1): site hospital_b: DataError"],
    )
    assert exit_status(report) == status
