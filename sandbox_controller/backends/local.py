"""The local backend: each sandbox is a devsandbox process on 127.0.0.1.

The embedded default, so the whole product runs on a laptop with no cluster. Every
process gets a small JSON file in the state directory (name, pid, port, labels); a
controller that restarts after being killed reads those files and adopts the
processes that are still alive, so none is orphaned. Processes run in their own
session, so a signal meant for the controller does not reach them by accident.

Every spawn and every kill the scheduler asks for passes the write guard first. The
processes are supervised for as long as the backend is open; their events reach
events() only between start() and stop(), while this process leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .. import __version__
from ..aiotasks import TaskGroup
from ..aiotime import Backoff
from ..clock import Clock, SystemClock
from ..egress_env import SandboxEgress
from ..model import DEFAULT_TEMPLATE, TemplateLimits
from ..sandbox_contract import claim_env
from ..templates import Template
from .base import (
    LABEL_CREATE_ID,
    LABEL_MANAGED_BY,
    LABEL_TEMPLATE,
    LABEL_TEMPLATE_HASH,
    MANAGED_BY,
    BackendError,
    ErrorKind,
    PodEvent,
    PodPhase,
    PodStatus,
    WriteGuard,
    new_pod_name,
    no_guard,
    shape_env,
    shape_of,
)
from .kit import EventFeed
from .probing import wait_until_serving

log = logging.getLogger(__name__)

# What a sandbox process inherits from the controller: what any program needs to run
# (and PYTHONPATH, so it runs the controller's own devsandbox), never anything else. The
# controller's environment holds its secrets (API token, token secret, database URL)
# and whatever its operator exported; a sandbox runs code an agent wrote.
INHERITED_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH"}
)


def sandbox_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed part of ``parent`` (locale variables LC_* included)."""
    return {k: v for k, v in parent.items() if k in INHERITED_ENV or k.startswith("LC_")}


TERMINATE_GRACE = 5.0
# A fresh sandbox answers /healthz within tens of milliseconds: ask soon, then less often.
HEALTH_POLL = Backoff(base=0.02, cap=0.5, jitter=False)


@dataclass
class _Process:
    name: str
    pid: int
    created_at: float
    labels: dict[str, str]
    port: int | None = None
    phase: PodPhase = PodPhase.PENDING
    detail: str | None = "starting"
    deleting: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def address(self) -> str | None:
        return f"127.0.0.1:{self.port}" if self.port else None

    def status(self) -> PodStatus:
        return PodStatus(
            self.name, self.phase, dict(self.labels), self.created_at, self.address, self.detail
        )


class LocalBackend:
    def __init__(
        self,
        state_dir: str | Path,
        *,
        stop_on_close: bool = False,
        ready_timeout: float = 60.0,
        python: str = sys.executable,
        clock: Clock | None = None,
        write_guard: WriteGuard = no_guard,
        claim_key: bytes | None = None,
        egress: SandboxEgress | None = None,
        sandbox_args: tuple[str, ...] = (),
        templates: tuple[Template, ...] = (),
    ) -> None:
        self.state_dir = Path(state_dir) / "pods"
        # Each sandbox's claim secret derives from it (sandbox_contract); None: the
        # sandboxes get none, and their hooks refuse every call.
        self.claim_key = claim_key
        # With egress on: each sandbox's proxy env (egress_env.py). Advice only here: a
        # local process can ignore HTTP_PROXY and connect directly (README).
        self.egress = egress
        self.sandbox_args = sandbox_args  # more devsandbox flags (tests: --no-hooks)
        self.write_guard = write_guard
        self.stop_on_close = stop_on_close
        self.ready_timeout = ready_timeout
        self.python = python
        self.clock: Clock = clock or SystemClock()
        self._closing = asyncio.Event()
        # Each template's devsandbox arguments and env; without templates, one default.
        self.templates = {t.name: t for t in templates} or {
            DEFAULT_TEMPLATE: Template(DEFAULT_TEMPLATE, TemplateLimits(DEFAULT_TEMPLATE))
        }
        self.default_template = next(iter(self.templates))
        self.template_hashes = {name: _local_hash(t) for name, t in self.templates.items()}
        self.template_hash = self.template_hashes[self.default_template]
        self._procs: dict[str, _Process] = {}
        self._feed = EventFeed()  # open while this process leads: start() to stop()
        self._tasks = TaskGroup("local-backend")
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._http is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._http = httpx.AsyncClient(timeout=2.0)
            for path in sorted(self.state_dir.glob("*.json")):
                self._adopt(path)
        self._feed.begin()

    async def stop(self) -> None:
        self._feed.end()

    async def close(self) -> None:
        await self.stop()
        self._closing.set()
        if self.stop_on_close:
            # Not a scheduling decision: ``dev`` stops the processes it owns as it
            # exits, lease or no lease, so none outlives it.
            for entry in list(self._procs.values()):
                self._stop_process(entry)
            await asyncio.gather(*(p.exited.wait() for p in list(self._procs.values())))
        await self._tasks.stop()
        if self._http is not None:
            await self._http.aclose()

    # ------------------------------------------------------------ protocol

    async def create_pod(self, labels: Mapping[str, str]) -> str:
        shape = shape_of(labels, self.default_template)
        template = self.templates.get(shape.template)
        if template is None:
            raise BackendError(f"no template {shape.template}", kind=ErrorKind.PERMANENT)
        self.write_guard()
        name = new_pod_name(5)
        create_id = uuid.uuid4().hex
        all_labels = {
            **labels,
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_TEMPLATE: shape.template,
            LABEL_TEMPLATE_HASH: self.template_hashes[shape.template],
            LABEL_CREATE_ID: create_id,
        }
        env = sandbox_environment(os.environ)
        env.update(template.env)
        env.update(shape_env(shape))
        env.update(claim_env(self.claim_key, create_id))
        if self.egress is not None:
            env.update(self.egress.env(create_id))
        log_file = open(self.state_dir / f"{name}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "sandbox_controller.devsandbox",
                "--port",
                "0",
                "--name",
                name,
                *self.sandbox_args,
                *template.local_args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            # No such command, or not executable: every spawn fails alike until the
            # installation is fixed. Other errors (no memory, too many processes) pass.
            permanent = isinstance(exc, FileNotFoundError | PermissionError | NotADirectoryError)
            kind = ErrorKind.PERMANENT if permanent else ErrorKind.TEMPORARY
            raise BackendError(f"cannot start sandbox process: {exc}", kind=kind) from exc
        finally:
            log_file.close()
        entry = _Process(name, proc.pid, time.time(), all_labels)
        self._procs[name] = entry
        self._save(entry)
        self._tasks.start(self._run_child(entry, proc), f"pod:{name}")
        return name

    async def delete_pod(self, name: str) -> None:
        entry = self._procs.get(name)
        if entry is None:
            return
        self.write_guard()
        self._stop_process(entry)

    def _stop_process(self, entry: _Process) -> None:
        if not entry.deleting:
            entry.deleting = True
            self._tasks.start(self._terminate(entry), f"stop:{entry.name}")

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        entry = self._procs.get(name)
        if entry is not None and not entry.deleting:
            entry.labels.update(labels)
            self._save(entry)

    async def resync(self) -> list[PodStatus]:
        return self._feed.resync([p.status() for p in self._procs.values()])

    def events(self) -> AsyncIterator[PodEvent]:
        return self._feed.events()

    # ------------------------------------------------------------ processes

    def _emit(self, entry: _Process, *, deleted: bool = False) -> None:
        self._feed.put(PodEvent(entry.status(), deleted=deleted))

    async def _run_child(self, entry: _Process, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self.ready_timeout):
                line = (await proc.stdout.readline()).decode().strip()
                if line.startswith("listening "):
                    entry.port = int(line.rsplit(":", 1)[1])
                    self._save(entry)
                    await self._wait_healthy(entry)
        except TimeoutError:
            entry.detail = "sandbox did not become healthy"
        if entry.port is None and not entry.deleting:
            entry.phase, entry.detail = PodPhase.FAILED, "sandbox process did not start"
            self._emit(entry)
        await proc.wait()
        self._exited(entry, proc.returncode)

    async def _wait_healthy(self, entry: _Process) -> None:
        assert self._http is not None
        if await wait_until_serving(
            self._http,
            lambda: entry.address,
            wanted=lambda: not entry.deleting,
            clock=self.clock,
            backoff=HEALTH_POLL,
            closing=self._closing,
        ):
            entry.phase, entry.detail = PodPhase.READY, None
            self._emit(entry)

    def _exited(self, entry: _Process, code: int | None) -> None:
        if not entry.deleting and entry.phase is not PodPhase.FAILED:
            # The sandbox died on its own: report it failed, as a kubelet would; the
            # scheduler ends its session and deletes it.
            entry.phase, entry.detail = PodPhase.FAILED, f"sandbox process exited ({code})"
            self._emit(entry)
        entry.exited.set()
        if entry.deleting:
            self._forget(entry)

    def _forget(self, entry: _Process) -> None:
        self._procs.pop(entry.name, None)
        for suffix in (".json", ".log"):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / f"{entry.name}{suffix}").unlink()
        self._emit(entry, deleted=True)

    async def _terminate(self, entry: _Process) -> None:
        if entry.exited.is_set():
            self._forget(entry)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(entry.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(TERMINATE_GRACE):
                await entry.exited.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry.pid, signal.SIGKILL)
            await entry.exited.wait()

    # ------------------------------------------------------------ adoption

    def _adopt(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
            entry = _Process(
                data["name"], int(data["pid"]), float(data["created_at"]), dict(data["labels"])
            )
            entry.port = data.get("port")
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable sandbox state file %s", path)
            path.unlink(missing_ok=True)
            return
        if not _is_our_process(entry.pid, entry.name):
            path.unlink(missing_ok=True)
            path.with_suffix(".log").unlink(missing_ok=True)
            return
        try:
            pidfd = os.pidfd_open(entry.pid)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            return
        entry.phase = PodPhase.READY if entry.port else PodPhase.PENDING
        entry.detail = None if entry.port else "starting"
        self._procs[entry.name] = entry
        loop = asyncio.get_running_loop()

        def on_exit() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._exited(entry, None)

        # A pidfd becomes readable when the process exits: no polling, and it works
        # for processes that are not our children (the previous controller's).
        loop.add_reader(pidfd, on_exit)
        if entry.port is None:
            # Its port was never learned, so it cannot serve: report it failed, and the
            # scheduler deletes it.
            entry.phase, entry.detail = PodPhase.FAILED, "adopted before it was ready"
            self._emit(entry)

    def _save(self, entry: _Process) -> None:
        data = {
            "name": entry.name,
            "pid": entry.pid,
            "port": entry.port,
            "created_at": entry.created_at,
            "labels": entry.labels,
        }
        tmp = self.state_dir / f"{entry.name}.json.tmp"
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state_dir / f"{entry.name}.json")


def _is_our_process(pid: int, name: str) -> bool:
    """Guard against pid reuse: the command line must name this very sandbox."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"sandbox_controller.devsandbox" in cmdline and name.encode() in cmdline


def _local_hash(template: Template) -> str:
    """The devsandbox version, and the template's own arguments and env if it has any
    (a template of none hashes as before templates: an upgrade rolls no process)."""
    base = f"devsandbox:{__version__}"
    if template.local_args or template.env:
        own = {"args": list(template.local_args), "env": dict(template.env)}
        base += json.dumps(own, sort_keys=True)
    return hashlib.sha256(base.encode()).hexdigest()[:10]
