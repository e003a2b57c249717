"""Real processes for the high-availability drills: kubesim, `serve` replicas, and a
PostgreSQL cluster of the test's own.

Everything here is an outside view. Who leads is read from /readyz, who wrote what to
Kubernetes from kubesim's call log (each replica has its own bearer token, so each call
names its caller), and faults are real signals to real processes. Every wait is bounded.
Also used by benchmarks/failover_bench.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sandbox_controller.backends.base import LABEL_MANAGED_BY, MANAGED_BY
from sandbox_controller.kubesim import write_kubeconfig

from ...eventually import eventually

NAMESPACE = "sandboxes"
API_TOKEN = "ha-drill-api-token"
Obj = dict[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGCONT (a drill may have left it stopped), SIGTERM, then SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Kubesim:
    proc: subprocess.Popen[bytes]
    url: str
    tmp: Path

    def kubeconfig(self, user: str) -> Path:
        """A kubeconfig whose token kubesim records as ``user`` (see --user)."""
        return write_kubeconfig(
            self.tmp / f"kubeconfig-{user}", self.url, f"{user}-token", NAMESPACE
        )

    async def calls(self, http: httpx.AsyncClient) -> list[Obj]:
        response = await http.get(f"{self.url}/_kubesim/calls")
        response.raise_for_status()
        calls: list[Obj] = response.json()
        return calls

    async def stats(self, http: httpx.AsyncClient) -> Obj:
        response = await http.get(f"{self.url}/_kubesim/stats")
        response.raise_for_status()
        stats: Obj = response.json()
        return stats

    async def pods(self, http: httpx.AsyncClient) -> dict[str, Obj]:
        """Managed pods by name, as the API server has them now."""
        response = await http.get(
            f"{self.url}/api/v1/namespaces/{NAMESPACE}/pods",
            params={"labelSelector": f"{LABEL_MANAGED_BY}={MANAGED_BY}"},
        )
        response.raise_for_status()
        return {p["metadata"]["name"]: p for p in response.json()["items"]}


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    client: httpx.AsyncClient = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def is_leader(self) -> bool:
        try:
            return (await self.client.get("/readyz", timeout=1.0)).status_code == 200
        except httpx.TransportError:
            return False

    async def open(self, user: str, thread: str, wait: float = 10.0) -> httpx.Response:
        return await self.client.post(
            "/sessions", json={"user_id": user, "thread_id": thread, "wait_seconds": wait}
        )

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class HA:
    """A kubesim, replicas of `serve` on one database, and their teardown."""

    def __init__(self, tmp: Path, database_url: str, *, ttl: float = 4.0, renew: float = 1.0):
        self.tmp = tmp
        self.database_url = database_url
        self.ttl = ttl
        self.renew = renew
        self.kubesim: Kubesim | None = None
        self.replicas: list[Replica] = []
        self.http = httpx.AsyncClient(timeout=10.0)
        self.env: dict[str, str] = {
            "SANDBOX_PREWARM_POOL_SIZE": "3",
            # Room for a split-brain round's pods: 3 warm, 2 claimed as the pause hits,
            # 3 claimed after the takeover, and the 2 per round of the last three
            # rounds that a new leader keeps for a route lease (recovery.py) before
            # deleting them.
            "SANDBOX_MAX_TOTAL_JOBS": "16",
            "SANDBOX_MAX_SESSIONS_PER_USER": "5",
        }

    async def start_kubesim(self, *users: str) -> Kubesim:
        args = [
            sys.executable, "-m", "sandbox_controller.kubesim",
            "--kubeconfig", str(self.tmp / "kubeconfig"),
            "--namespace", NAMESPACE,
            "--nodes", "4",
            "--startup-delay", "0.3",
            "--termination-delay", "0.05",
            "--bookmark-interval", "1",
            "--workload",
        ]  # fmt: skip
        for user in users:
            args += ["--user", f"{user}={user}-token"]
        log = (self.tmp / "kubesim.log").open("wb")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(30):
                line = await asyncio.to_thread(proc.stdout.readline)
        except TimeoutError:
            proc.kill()
            raise
        self.kubesim = Kubesim(proc, json.loads(line)["url"], self.tmp)
        return self.kubesim

    async def start_replica(self, name: str, **env: str) -> Replica:
        assert self.kubesim is not None, "start kubesim first"
        port = free_port()
        values = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SANDBOX_BACKEND": "kubernetes",
            "SANDBOX_KUBECONFIG": str(self.kubesim.kubeconfig(name)),
            "SANDBOX_NAMESPACE": NAMESPACE,
            "SANDBOX_DATABASE_URL": self.database_url,
            "SANDBOX_HOST": "127.0.0.1",
            "SANDBOX_PORT": str(port),
            "SANDBOX_API_TOKEN": API_TOKEN,
            "SANDBOX_TOKEN_SECRET": "ha-drill-token-secret",
            "SANDBOX_STATE_DIR": str(self.tmp / f"state-{name}"),
            "SANDBOX_LEADER_LEASE_TTL": f"{self.ttl:g}s",
            "SANDBOX_LEADER_RENEW_INTERVAL": f"{self.renew:g}s",
            "SANDBOX_KUBE_QPS": "200",
            "SANDBOX_KUBE_BURST": "400",
            **self.env,
            **env,
        }
        log = self.tmp / f"replica-{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox_controller.cli", "serve"],
                env=values,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        url = f"http://127.0.0.1:{port}"
        client = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30.0
        )
        replica = Replica(name, proc, url, log, client)
        self.replicas.append(replica)
        await self._wait_healthy(replica)
        return replica

    async def _wait_healthy(self, replica: Replica, limit: float = 30.0) -> None:
        async def healthy() -> bool:
            if replica.proc.poll() is not None:
                raise AssertionError(f"{replica.name} exited:\n{replica.tail()}")
            with contextlib.suppress(httpx.TransportError):
                return (await replica.client.get("/healthz", timeout=1.0)).status_code == 200
            return False

        try:
            await eventually(healthy, within=limit, every=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{replica.name}:\n{replica.tail()}") from None

    async def leader(self, among: list[Replica] | None = None, limit: float = 20.0) -> Replica:
        """The one replica whose /readyz says it leads (waits for there to be one)."""
        candidates = among if among is not None else self.replicas
        found: list[Replica] = []

        async def one_leads() -> bool:
            for replica in candidates:
                if replica.proc.poll() is None and await replica.is_leader():
                    found.append(replica)
                    return True
            return False

        try:
            await eventually(one_leads, within=limit, every=0.05)
        except AssertionError:
            logs = "\n".join(f"--- {r.name}\n{r.tail()}" for r in candidates)
            names = [r.name for r in candidates]
            raise AssertionError(f"no leader among {names} in {limit}s\n{logs}") from None
        return found[-1]

    async def wait_idle(self, replica: Replica, count: int, limit: float = 30.0) -> None:
        async def idle() -> bool:
            with contextlib.suppress(httpx.TransportError):
                response = await replica.client.get("/pool", timeout=2.0)
                return response.status_code == 200 and response.json()["pods"]["idle"] >= count
            return False

        await eventually(idle, within=limit, every=0.1, what=f"{replica.name}: {count} idle pods")

    async def close(self) -> None:
        for replica in self.replicas:
            await asyncio.to_thread(_stop, replica.proc)
            await replica.client.aclose()
        if self.kubesim is not None:
            await asyncio.to_thread(_stop, self.kubesim.proc)
        await self.http.aclose()


async def database_activity(database_url: str) -> list[str]:
    """What each connection to the drill's PostgreSQL database is doing: when a takeover
    stalls, this shows who holds a transaction open and who waits on a lock."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT state, wait_event_type, left(query, 70) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return [" | ".join(str(v) for v in row) for row in rows]
    finally:
        await engine.dispose()


def writes_by(calls: list[Obj], user: str, after: float) -> list[Obj]:
    """Kubernetes writes (create, delete, patch, update) that ``user`` sent after ``after``."""
    verbs = {"create", "delete", "patch", "update", "deletecollection"}
    return [c for c in calls if c["user"] == user and c["verb"] in verbs and c["at"] > after]


class OwnPostgres:
    """A PostgreSQL cluster of the test's own (initdb into a temporary directory, a free
    port), so a drill can stop and start the database without touching the shared one."""

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise FileNotFoundError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
        self.bin = found[-1].parent
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the server runs as
        # the postgres user when the tests run as root (initdb refuses root).
        self.dir = Path(tempfile.mkdtemp(prefix="sbx-ha-pg-"))
        self.data = self.dir / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {proc.stdout}{proc.stderr}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -l: the server's output to a file; inherited pipes would keep run() waiting.
        log = str(self.dir / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "30", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
