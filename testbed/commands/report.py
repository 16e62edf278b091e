"""`testbed report RUN_DIR`: write the plots and report.md of a run (or campaign) directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run or campaign directory (runs/<name>-<time>/)")


def run(args: argparse.Namespace) -> int:
    from testbed.campaign.report import is_campaign, write_campaign_report
    from testbed.records import RecordError
    from testbed.report import write_report

    if not (args.run_dir / "events.jsonl").is_file():
        raise RecordError(f"{args.run_dir}: not a run directory (no events.jsonl)")
    # A campaign is not an FL run: its report has its own template.
    write = write_campaign_report if is_campaign(args.run_dir) else write_report
    report = write(args.run_dir)
    if args.json:
        print(
            json.dumps({"report": str(report), "plots": sorted(p.name for p in report.parent.glob("*.png"))})
        )
    elif not args.quiet:
        print(report)
    return 0
