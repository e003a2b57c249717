"""Carrying out what a round decided: backend calls (create, delete, label) and the
sandbox's hook calls (claim, status, release). Each runs as its own task; what comes
back (a pod created, a claim answered, a sandbox busy) goes to the loop's queue as a
command, so the pool is only ever changed by the loop (rounds.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import SpanKind

from .. import tracing
from ..aiotasks import TaskGroup
from ..audit import AuditSink, send
from ..backends.base import Backend, BackendError, LeaseLost, PodEvent, pool_labels
from ..hooks import ClaimPayload, HookResult, SandboxHooks
from ..model import BusyAnswer, Shape
from ..sandbox_contract import HOOK_NOT_IMPLEMENTED
from ..snapshots import (
    RestoreFailed,
    SnapshotFailed,
    SnapshotStore,
    restore_snapshot,
    take_snapshot,
)
from .claiming import NO_ANSWER, ClaimFailure
from .conditions import kind_of
from .effects import ClaimCall, Outbox, Release, RestoreCall, SnapshotCall, StatusCheck
from .egress import OpenSecret
from .pool import Pool
from .ports import LoopObserver, StatusAnswer

# The loop's parts log as the loop: one logger for operators to tune.
log = logging.getLogger("sandbox_controller.scheduler.loop")
EMPTY: Mapping[str, Context] = {}


@dataclass
class Command:
    """One change to the pool, applied by the loop's task in its next round; ``future``
    learns the result once that round is committed."""

    apply: Callable[[Pool, float], Any]
    future: asyncio.Future[Any] | None = None
    # Who asked (a token id, "console:operator"): the audit log's caller of what it
    # changes. None: the controller's own doing (a pod event, a hook's answer).
    caller: str | None = None
    # The trace of the request it serves (tracing.py), when tracing is on.
    trace: Context | None = None


class EffectCalls:
    """The calls a round's outbox asks for, each its own task. Their results come back
    as commands on ``_queue``; the payloads the claim calls carry are kept here."""

    def __init__(
        self,
        backend: Backend,
        hooks: SandboxHooks | None,
        observer: LoopObserver,
        audit: AuditSink = send,
    ) -> None:
        self.backend = backend
        # Where each committed state change goes (the audit log, the webhooks).
        self.audit = audit
        # Calls the sandbox contract's hooks; None when limits.hooks is off.
        self.hooks = hooks
        self.observer = observer
        self.running = False
        self._queue: asyncio.Queue[Command] = asyncio.Queue()
        self._effects = TaskGroup("scheduler-effects")
        # Backend calls the write guard refused because the lease was not confirmed at
        # that moment (after a pause, say): this leader's decisions still, sent when the
        # lease is confirmed again (lease_confirmed), dropped if it is lost (stop).
        self._held: list[tuple[Callable[[], Coroutine[Any, Any, None]], str]] = []
        # The env and files of POST /sessions calls whose claims may still need them,
        # by request id: in memory only, never in the store or a log (claiming.py).
        self._payloads: dict[int, ClaimPayload] = {}
        # Pods whose hand-out to a session has left this process (a label or claim
        # call started), until they are forgotten: a rebuild must not take one for a
        # fresh pool pod, whatever its row and labels say yet (recovery.py).
        self._handed_out: set[str] = set()
        # Trace contexts of the POST /sessions calls not yet answered, by request id:
        # empty unless tracing is on (tracing.py).
        self._traces: dict[int, Context] = {}
        # Status calls in flight, by session: concurrent opens of one user share them.
        self._status_calls: dict[str, asyncio.Task[BusyAnswer]] = {}
        # Where suspended sessions' archives go (None: suspension off), the most one
        # may hold, and how long one snapshot or restore call may take.
        self.snapshot_store: SnapshotStore | None = None
        self.snapshot_max_bytes = 1024**3
        self.snapshot_timeout = 300.0

    def _start_effects(self, outbox: Outbox, traces: Mapping[str, Context] = EMPTY) -> None:
        """Start the round's calls; ``traces``: the trace each pod's calls join."""
        self._handed_out.update(outbox.labels)
        self._handed_out.update(call.pod_name for call in outbox.claims)
        # Claims first: a caller's answer waits on each, and every task takes its first
        # step (building and sending its request) in the order it was started.
        for call in outbox.claims:
            claim = self._claim(call, traces.get(call.pod_name))
            self._effects.start(claim, f"claim:{call.pod_name}")
        for shape in outbox.create_shapes:
            self._effects.start(self._create(shape), "create")
        for name in outbox.deletes:
            release = outbox.releases.get(name)
            self._effects.start(self._delete(name, release), f"delete:{name}")
        for check in outbox.status_checks:
            self._effects.start(self._check_busy(check), f"status:{check.session_id}")
        for name, labels in outbox.labels.items():
            self._effects.start(self._label(name, labels, traces.get(name)), f"label:{name}")
        for seconds in outbox.startup_seconds:
            self.observer.pod_started(seconds)
        for reason in outbox.ended:
            self.observer.session_ended(reason)
        for _ in range(outbox.claim_failures):
            self.observer.claim_hook_failed()
        for event in outbox.audit:
            self.audit(event)  # a log line queued, a webhook queued: never a wait
        self._start_suspension_effects(outbox)

    # ------------------------------------------------------------ suspend and resume

    def _start_suspension_effects(self, outbox: Outbox) -> None:
        for snapshot in outbox.snapshots:
            self._effects.start(self._snapshot(snapshot), f"snapshot:{snapshot.session_id}")
        for restore in outbox.restores:
            self._effects.start(self._restore(restore), f"restore:{restore.session_id}")
        for key in outbox.archive_deletes:
            self._effects.start(self._delete_archive(key), f"archive-delete:{key}")
        for outcome in outbox.snapshot_outcomes:
            self.observer.snapshot_outcome(outcome)
        for size in outbox.snapshot_bytes:
            self.observer.snapshot_stored(size)
        for seconds in outbox.suspend_seconds:
            self.observer.suspended(seconds)
        for seconds in outbox.resume_seconds:
            self.observer.resumed(seconds)

    async def _snapshot(self, call: SnapshotCall) -> None:
        """Stream the pod's snapshot into the store; the size (or why not) goes back to
        the pool, which records the archive in its next round."""
        size: int | None = None
        failure: tuple[str, str] | None = None
        if self.hooks is None or self.snapshot_store is None:
            failure = ("not_supported", "no snapshot store")
        else:
            try:
                size = await take_snapshot(
                    self.hooks.client,
                    call.address,
                    self.hooks.secret(call.create_id),
                    self.snapshot_store,
                    call.key,
                    max_bytes=self.snapshot_max_bytes,
                    timeout=self.snapshot_timeout,
                )
            except SnapshotFailed as exc:
                failure = (exc.reason, exc.detail)
            except Exception as exc:  # a bug of ours: the session still ends, said why
                log.exception("snapshot of session %s failed", call.session_id)
                failure = ("hook_error", type(exc).__name__)
        if failure is not None:
            log.warning(
                "snapshot of session %s (pod %s) failed: %s: %s",
                call.session_id,
                call.pod_name,
                *failure,
            )

        def apply(pool: Pool, now: float) -> None:
            pool.snapshot_taken(call.session_id, call.attempt, call.key, size, failure, now)

        self._queue.put_nowait(Command(apply))

    async def _restore(self, call: RestoreCall) -> None:
        failure: tuple[str, str] | None = None
        if self.hooks is None or self.snapshot_store is None:
            failure = ("not_supported", "no snapshot store")
        else:
            try:
                await restore_snapshot(
                    self.hooks.client,
                    call.address,
                    self.hooks.secret(call.create_id),
                    self.snapshot_store,
                    call.key,
                    timeout=self.snapshot_timeout,
                )
            except RestoreFailed as exc:
                failure = (exc.reason, exc.detail)
            except Exception as exc:
                log.exception("restore of session %s failed", call.session_id)
                failure = ("hook_error", type(exc).__name__)
        if failure is not None:
            log.warning(
                "restore of session %s into pod %s failed: %s: %s",
                call.session_id,
                call.pod_name,
                *failure,
            )

        def apply(pool: Pool, now: float) -> None:
            pool.restore_answered(call.session_id, call.attempt, failure, now)

        self._queue.put_nowait(Command(apply))

    async def _delete_archive(self, key: str) -> None:
        """Its record is gone (committed): the object goes. A failure leaves an orphan
        for the sweep, never a record without its object."""
        if self.snapshot_store is None:
            return
        try:
            await self.snapshot_store.delete(key)
        except Exception as exc:
            log.warning("deleting archive %s failed (the sweep retries): %s", key, exc)

    # ------------------------------------------------------------ backend effects

    def lease_confirmed(self) -> None:
        """The database confirmed the lease again: send what waited for it."""
        if not self.running:
            return
        held, self._held = self._held, []
        for call, name in held:
            self._effects.start(call(), name)

    def _hold(self, call: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        # Not a failure of the platform: no backoff, no error count, no retry storm.
        log.info("%s waits until the leader lease is confirmed again", name)
        self._held.append((call, name))

    async def _create(self, shape: Shape) -> None:
        try:
            # "pool" until assigned: readiness shows in the pod's own status, and a
            # second patch when it turns ready would cost an API call per pod.
            name = await self.backend.create_pod(pool_labels(shape))
        except LeaseLost:
            self._hold(lambda: self._create(shape), "create")
            return
        except Exception as exc:
            kind, message = kind_of(exc), str(exc)
            log.warning("creating a sandbox pod failed (%s): %s", kind, message)
            self.observer.backend_failed("create", kind)
            self._queue.put_nowait(
                Command(lambda pool, now: pool.create_failed(now, kind, message, shape))
            )
            return
        self._queue.put_nowait(Command(lambda pool, now: pool.pod_created(name, now, shape)))

    async def _delete(self, name: str, release: Release | None = None) -> None:
        if release is not None:
            await self._release(name, release)  # whatever its answer, the delete follows
        try:
            await self.backend.delete_pod(name)
        except LeaseLost:
            self._hold(lambda: self._delete(name), f"delete:{name}")
        except Exception as exc:
            log.warning("deleting pod %s failed: %s", name, exc)
            self.observer.backend_failed("delete", kind_of(exc))
            self._queue.put_nowait(Command(lambda pool, now: pool.delete_failed(name, now)))

    async def _claim(self, call: ClaimCall, trace: Context | None = None) -> None:
        """Deliver the session to its pod's claim hook; the answer goes back to the pool
        as a command. No write guard: a hook call is no Kubernetes write, and the
        round that decided it committed under this leader's fence."""
        accepted, failure = True, NO_ANSWER
        if self.hooks is not None:
            accepted, failure = await self._call_claim(self.hooks, call, trace)
            if not accepted:
                log.warning(
                    "claim hook of pod %s failed for session %s: %s",
                    call.pod_name,
                    call.session_id,
                    failure.words,
                )

        def apply(pool: Pool, now: float) -> None:
            pool.claim_answered(call.session_id, call.attempt, accepted, now, failure)

        self._queue.put_nowait(Command(apply))

    async def _call_claim(
        self, hooks: SandboxHooks, call: ClaimCall, trace: Context | None
    ) -> tuple[bool, ClaimFailure]:
        held = self._payloads.get(call.request_id) if call.request_id is not None else None
        env = dict(held.env) if held else {}
        if call.secrets:
            # Each secret's placeholder, never its value, and the session's own (the
            # same on every pod it has, so code that saved one keeps working).
            try:
                secrets = await self.egress_secrets(call.session_id)
            except Exception as exc:  # the store unreachable: an attempt failed, retried
                return False, ClaimFailure(False, f"its egress secrets unread: {exc}")
            env.update({s.name: s.placeholder for s in secrets})
        payload = ClaimPayload(metadata=call.metadata, env=env, files=held.files if held else ())
        session = (call.session_id, call.user_id, call.thread_id)
        # The hook's request carries this span's traceparent (hooks.py).
        with tracing.span("sandbox.claim", trace, kind=SpanKind.CLIENT, pod=call.pod_name):
            result = await hooks.claim(call.address, call.create_id, session, payload)
        return result.ok, claim_failure(result)

    async def egress_secrets(self, session_id: str) -> tuple[OpenSecret, ...]:
        """A live session's egress secrets with their values (loop.py: from the egress
        book, else the store)."""
        raise NotImplementedError

    # ------------------------------------------------------------ hook effects

    def _status(self, check: StatusCheck) -> asyncio.Task[BusyAnswer]:
        """The session's status call in flight, or a new one."""
        task = self._status_calls.get(check.session_id)
        if task is None:
            task = self._effects.start(self._ask_status(check), f"status:{check.session_id}")
            self._status_calls[check.session_id] = task
            task.add_done_callback(lambda _: self._status_calls.pop(check.session_id, None))
        return task

    async def _ask_status(self, check: StatusCheck) -> BusyAnswer:
        assert self.hooks is not None
        # Bounded there as a whole (a deadline, a size cap), and never raises.
        answer = await self.hooks.status(check.address, check.create_id)
        kind: StatusAnswer = "busy" if answer.busy else "not_busy"
        if answer.refused:
            kind = "unauthorized"
        elif not answer.answered:
            kind = "no_answer"
        self.observer.status_answered(kind)
        return answer

    async def _check_busy(self, check: StatusCheck) -> None:
        """An idle session's check: its answer goes back to the pool, which waits for
        it (or for its fallback deadline, should this answer be lost)."""
        if self.hooks is None:
            return  # the pool's fallback deadline decides
        answer = await self._status(check)
        if self.running:
            self._queue.put_nowait(Command(busy_command(check, answer)))

    async def _release(self, name: str, release: Release) -> None:
        if self.hooks is None:
            return
        try:
            async with asyncio.timeout(self.hooks.release_timeout):
                result = await self.hooks.release(
                    release.address, release.create_id, release.session_id, release.reason
                )
        except TimeoutError:
            log.info("pod %s: release hook timed out; deleting it anyway", name)
            return
        if not result.ok:
            log.info("pod %s: release hook failed (%s); deleting it anyway", name, result.detail)

    async def _label(self, name: str, labels: dict[str, str], trace: Context | None = None) -> None:
        try:
            with tracing.span("backend.set_labels", trace, pod=name):
                await self.backend.set_labels(name, labels)
        except LeaseLost:
            self._hold(lambda: self._label(name, labels), f"label:{name}")
        except BackendError as exc:
            # Labels are for operators and a second opinion at recovery; the store
            # is the record, so a lost label is logged, not retried forever.
            log.info("labelling pod %s failed: %s", name, exc)
            self.observer.backend_failed("label", exc.kind)


def event_command(event: PodEvent) -> Callable[[Pool, float], None]:
    if event.deleted:
        name, eviction = event.pod.name, event.pod.evicted
        return lambda pool, now: pool.pod_gone(name, now, eviction)
    status = event.pod
    return lambda pool, now: pool.pod_observed(status, now)


def busy_command(check: StatusCheck, answer: BusyAnswer) -> Callable[[Pool, float], None]:
    return lambda pool, now: pool.busy_answer(check.session_id, answer, now)


# Client errors that say "not now" rather than "not this payload": ordinary failures.
_NOT_A_REFUSAL = frozenset({408, 425, 429})


def claim_failure(result: HookResult) -> ClaimFailure:
    """How a claim call failed: a refusal if the sandbox answered a 4xx that means
    neither "no claim hook" (404/405/501) nor "not now"."""
    status = result.status
    refused = (
        status is not None
        and 400 <= status < 500
        and status not in HOOK_NOT_IMPLEMENTED
        and status not in _NOT_A_REFUSAL
    )
    words = f"{result.detail}: {result.answer}" if result.answer else result.detail
    return ClaimFailure(refused, words or "failed")
