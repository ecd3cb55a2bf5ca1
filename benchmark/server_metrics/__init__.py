"""The server's own metrics, scraped during a run: a second witness to what the client measured.

engines.py  which Prometheus families each engine exports, per canonical quantity; detect()
scrape.py   the scraper child process (and ScraperProcess, its handle in the load test)
series.py / reconcile.py  reading the scrapes back, and comparing them with the records

The scraper writes `server_metrics.jsonl` in the run folder, one JSON object per line (see scrape.py
for the line kinds). `read` below is the tolerant reader everything else uses.
"""
from __future__ import annotations

import json

FILE = "server_metrics.jsonl"  # the file name in the run folder


def read(path: str) -> list[dict]:
    """Every complete line of a server_metrics.jsonl as a dict, in file order. A missing file is
    empty; a line cut short (the scraper killed mid-write) or otherwise unreadable is skipped."""
    out = []
    try:
        f = open(path, "rb")  # bytes: broken UTF-8 is skipped like any unreadable line
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and "kind" in obj:
                out.append(obj)
    return out
