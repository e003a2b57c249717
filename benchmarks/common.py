"""Pieces the benchmarks share: free ports, scratch databases, process memory."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
_PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def fresh_database(kind: str, tmp: Path, prefix: str = "bench") -> str:
    """A new SQLite file or a new PostgreSQL database (127.0.0.1:5432) for one run."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp}/bench.db"
    name = f"{prefix}_{os.getpid()}_{int(time.time())}"
    subprocess.run([*_PSQL, f'CREATE DATABASE "{name}"'], check=True)
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"


def drop_database(url: str) -> None:
    if url.startswith("postgresql"):
        name = url.rsplit("/", 1)[1]
        subprocess.run([*_PSQL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'], check=False)
