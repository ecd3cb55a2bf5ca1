"""`python -m benchmark report RUN_DIR | accuracy RUN_DIR | compare BASE NEW | simulate [options]`: post-processing and the simulator, no load."""
from __future__ import annotations

import argparse
import sys

from .options import PROFILES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":  # the simulator owns its options
        from .simulator import main as simulate
        return simulate(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmark")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{report,accuracy,compare,simulate}")
    rep = sub.add_parser("report", help="recompute the tables and report.html of a run from its records.jsonl")
    rep.add_argument("run_dir")
    rep.add_argument("--metric-profile", choices=PROFILES, default=None,
                     help="render under another tool's definitions: written to RUN_DIR/profiles/PROFILE/, the "
                          "run's own files untouched (its own profile renders in place)")
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
        profile, out_dir = profile_target(args.run_dir, args.metric_profile)
        report(args.run_dir, profile=profile, html=args.html or True, out_dir=out_dir)
    except ReportError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    return 0


PROFILES_DIR = "profiles"


def profile_target(run_dir: str, profile: str | None) -> tuple[str | None, str | None]:
    """(profile, output folder) of `report RUN [--metric-profile P]`.

    The run folder's own files (performances/, report.html, AISBench's file names) are the profile in
    config.json, which `compare` reads too; another profile's tables and report.html go to
    RUN/profiles/P/ beside them, so rendering under vllm never overwrites the run's own figures, and the
    run's own profile (or none) renders in place. A folder re-reported by an older version, whose
    config.json was switched to P (`metric_profile_as_run` keeps the one the test ran with), is switched
    back when its own profile is asked for."""
    import json
    import os
    from .run import ReportError
    path = os.path.join(run_dir, "config.json")
    if profile is None or not os.path.isfile(os.path.join(run_dir, "records.jsonl")):
        return profile, None  # report() says what is missing
    config = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except ValueError as e:
            raise ReportError(f"{path}: not valid JSON ({e})") from None
    if config.get("metric_profile_as_run") == profile:
        config["metric_profile"] = config.pop("metric_profile_as_run")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        print(f"Metric profile {profile}: the run's own again (config.json restored)")
    if profile == config.get("metric_profile", "default"):
        return profile, None
    out_dir = os.path.join(run_dir, PROFILES_DIR, profile)
    print(f"Metric profile {profile}: tables and report.html written under {out_dir} "
          f"(the run's own, {config.get('metric_profile', 'default')}, are left as they are)")
    return profile, out_dir


if __name__ == "__main__":
    sys.exit(main())
