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
        if args.metric_profile:
            set_profile(args.run_dir, args.metric_profile)
        report(args.run_dir, html=args.html or True)
    except ReportError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


def set_profile(run_dir: str, profile: str) -> None:
    """`report --metric-profile P`: the run folder holds one profile's tables at a time (AISBench's file
    names, which its tools expect), and config.json says which; so P is written there first and the tables
    and report.html are then made in it. `metric_profile_as_run` keeps the one the test ran with;
    `report RUN --metric-profile <that one>` goes back."""
    import json
    import os
    from .run import ReportError
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(os.path.join(run_dir, "records.jsonl")):
        return  # report() says what is missing
    config = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except ValueError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from None
    old = config.get("metric_profile", "default")
    if old == profile:
        return
    config.setdefault("metric_profile_as_run", old)
    config["metric_profile"] = profile
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    print(f"Metric profile {profile} (was {old}): config.json updated; tables and report.html follow it")


if __name__ == "__main__":
    sys.exit(main())
