"""`python -m benchmark report RUN_DIR | accuracy RUN_DIR | compare BASE NEW | simulate [options]`: post-processing and the simulator, no load."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":  # the simulator owns its options
        from .simulator import main as simulate
        return simulate(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{report,accuracy,compare,simulate}")
    rep = sub.add_parser("report", help="recompute the tables and report.html of a run from its records.jsonl")
    rep.add_argument("run_dir")
    rep.add_argument("--metric-profile", choices=("default", "aisbench"), default=None,
                     help="override the run's profile")
    rep.add_argument("--html", metavar="PATH", default=None,
                     help="where to write the HTML report (default: RUN_DIR/report.html)")
    acc = sub.add_parser("accuracy", help="score a run's completions (GSM8K rules) from its records.jsonl")
    acc.add_argument("run_dir")
    acc.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    from .compare import add_parser as add_compare
    add_compare(sub)
    sub.add_parser("simulate", help="run the built-in OpenAI-compatible simulator (see --help)")
    args = parser.parse_args(argv)

    if args.command == "compare":
        from .compare import run as compare_run
        return compare_run(args)
    if args.command == "accuracy":
        from .accuracy import main as accuracy_main
        return accuracy_main(args.run_dir, progress=not args.no_progress)

    from .run import ReportError, report
    try:
        report(args.run_dir, profile=args.metric_profile, html=args.html or True)
    except ReportError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
