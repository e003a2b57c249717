"""``sandbox-controller usage``: pod-seconds per org and template, as CSV, from the store.

A session holds one pod from its open to its end, so its pod-seconds are the part of
[created_at, ended_at (or now)] inside the window asked for. The warm pools' idle pods
belong to no session and are not counted (the pods table keeps only the pods that
exist now). Sessions ended more than ``SANDBOX_ENDED_RETENTION`` ago are purged, which
bounds ``--since``. With ``--pseudonymize``, org ids become keyed hashes (a key random
per export: the same org maps to the same pseudonym within one export only).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import sqlalchemy as sa

from .config import ConfigError, load_settings
from .durations import parse_duration
from .model import DEFAULT_TEMPLATE
from .sim.export import pseudonymiser
from .store import Store
from .store.tables import sessions

# DESIGN's columns first (org, template, pod_seconds), then how many sessions they were.
HEADER = ("org", "template", "pod_seconds", "sessions")


def pod_seconds(
    rows: Iterable[Mapping[str, Any]], start: float, end: float
) -> dict[tuple[str, str], tuple[int, float]]:
    """(org, template) -> (sessions, pod-seconds) within [start, end]."""
    totals: defaultdict[tuple[str, str], tuple[int, float]] = defaultdict(lambda: (0, 0.0))
    for row in rows:
        held_from = max(start, float(row["created_at"]))
        ended = row["ended_at"]
        held_to = min(end, float(ended) if ended is not None else end)
        if held_to < held_from:
            continue
        key = (str(row.get("org_id") or ""), str(row.get("template") or DEFAULT_TEMPLATE))
        count, seconds = totals[key]
        totals[key] = (count + 1, seconds + held_to - held_from)
    return dict(totals)


def write_csv(
    totals: Mapping[tuple[str, str], tuple[int, float]],
    out: TextIO,
    org_of: Callable[[str], str] = lambda org: org,
) -> None:
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for (org, template), (count, seconds) in sorted(totals.items()):
        writer.writerow((org_of(org) if org else "", template, f"{seconds:.0f}", count))


async def load_rows(database_url: str, start: float) -> list[dict[str, Any]]:
    """Sessions alive at any time since ``start``."""
    query = sa.select(
        sessions.c.org_id, sessions.c.template, sessions.c.created_at, sessions.c.ended_at
    ).where(sa.or_(sessions.c.ended_at.is_(None), sessions.c.ended_at >= start))
    store = Store.open(database_url)
    try:
        return await store.run(lambda conn: [dict(r._mapping) for r in conn.execute(query)])
    finally:
        await store.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sandbox-controller usage",
        description="Pod-seconds per org and template (CSV), from SANDBOX_DATABASE_URL.",
    )
    p.add_argument("--since", default="7d", help="the window, back from now (7d, 12h; 7d)")
    p.add_argument("--pseudonymize", action="store_true", help="hash the org ids (keyed)")
    p.add_argument("--database-url", help="the store (default: SANDBOX_DATABASE_URL)")
    p.add_argument("-o", "--output", help="write the CSV here (default: standard output)")
    return p


def usage_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        since = parse_duration(args.since)
        url = args.database_url or load_settings().database_url
    except (ValueError, ConfigError) as exc:
        print(f"sandbox-controller usage: error: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    totals = pod_seconds(asyncio.run(load_rows(url, now - since)), now - since, now)
    import secrets

    org_of = pseudonymiser("o", secrets.token_bytes(32)) if args.pseudonymize else str
    if args.output is None:
        write_csv(totals, sys.stdout, org_of)
    else:
        with open(args.output, "w", newline="") as out:
            write_csv(totals, out, org_of)
    return 0
