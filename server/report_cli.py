"""``privmed-report PARENT_RUN_ID``: a sweep's privacy-utility report, from MLflow alone.

Examples
--------
privmed-report 3f2a...                          # logs report/privacy_utility.{png,csv,html} to the parent
privmed-report 3f2a... --reference 9c1b...      # + a non-private run (tagged privmed.privacy=none) as reference
privmed-report 3f2a... --out reports/ --no-log  # only write the files locally

The same report is written at the end of every ``privmed-simulate -m ...`` sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def main(argv: list[str] | None = None) -> int:
    """Build the report of one parent run; log it to the parent and/or write it to ``--out``."""
    parser = argparse.ArgumentParser(
        prog="privmed-report", description=__doc__.split("\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("parent_run_id", help="the sweep's parent run (printed when the sweep starts)")
    parser.add_argument("--reference", action="append", default=[], metavar="RUN_ID",
                        help="a non-private run to draw as the reference line (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the files to this folder")
    parser.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    if args.no_log and args.out is None:
        parser.error("--no-log needs --out (else the report goes nowhere)")
    from mlflow.tracking import MlflowClient

    from server.sweep_report import ReportError, build_report, log_report

    client = MlflowClient(args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    try:
        if args.out is not None:
            report = build_report(client, args.parent_run_id, out_dir=args.out, references=args.reference)
            print(f"wrote {', '.join(str(p) for p in report.files)}")
        if not args.no_log:
            report = log_report(client, args.parent_run_id, references=args.reference)
            print(f"logged {', '.join(f'runs:/{args.parent_run_id}/{p}' for p in report.files)}")
    except ReportError as err:
        print(f"privmed-report: error: {err}", file=sys.stderr)
        return 2
    print(report.rows.drop(columns=["setting"]).to_string(index=False, max_colwidth=40))
    return 0


if __name__ == "__main__":
    sys.exit(main())
