"""The server's own metrics, scraped during a run: a second witness to what the client measured.

engines.py  which Prometheus families each engine exports, per canonical quantity; detect()
scrape.py   the scraper child process (and ScraperProcess, its handle in the load test)
series.py / reconcile.py  reading the scrapes back, and comparing them with the records

The scraper writes `server_metrics.jsonl` in the run folder, one JSON object per line (see scrape.py
for the line kinds). `read` below is the tolerant reader everything else uses.
"""
from __future__ import annotations

FILE = "server_metrics.jsonl"  # the file name in the run folder


def read(path: str) -> list[dict]:
    """Every complete line of a server_metrics.jsonl as a dict, in file order. A missing file is
    empty; a line cut short (the scraper killed mid-write) or otherwise unreadable is skipped."""
    from ..records import jsonl_dicts
    try:
        return [obj for obj in jsonl_dicts(path) if obj is not None and "kind" in obj]
    except FileNotFoundError:
        return []
