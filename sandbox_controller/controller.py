"""The controller process: store, backend, leader lease and scheduler, started and
stopped in order.

Only the lease holder schedules. A second replica polls for the lease and takes over
when the leader stops renewing it or releases it. Two fences keep a deposed leader
harmless: every store write carries the lease epoch (store.db), and every backend
write passes the write guard, which refuses once the lease may have ended by this
process's own monotonic clock, with a margin (scheduler/lease.py). The backend
follows the pods only while this process leads: a new leader starts from the store
and a fresh list, never from a standby's backlog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from . import tracing
from .aiotasks import TaskGroup
from .aiotime import sleep_or_stop
from .audit import AuditLog
from .backends.base import Backend, LeaseLost, MarksLeader, WriteGuard, no_guard
from .clock import Clock, SystemClock
from .config import Settings
from .credentials import split_list
from .egress_ca import sandbox_bundle
from .egress_env import DOCKER_BUNDLE, KUBE_BUNDLE, SandboxEgress
from .egress_secrets import Sealer
from .hooks import SandboxHooks
from .metrics import ControllerMetrics
from .model import AuditEvent, EndReason, PoolStatus
from .scheduler.lease import LeaseTerm
from .scheduler.loop import Scheduler
from .snapshots import SnapshotStore, open_store
from .store import Fence, LeaseHolder, SchemaState, Store
from .store.db import wait_for_database
from .tokens import public_key, secret_key_id
from .webhooks import Webhooks

if TYPE_CHECKING:
    from .backends.kube_token_review import TokenReviewer

log = logging.getLogger(__name__)

RETENTION_EVERY = 3600.0
# A standby asks for the lease at least this often, so that a released lease (a
# leader's SIGTERM) changes hands within about this long.
STANDBY_POLL = 0.5
# How long a stopping dev waits for its live sessions' ending to be written.
END_SESSIONS_GRACE = 5.0


async def make_backend(
    settings: Settings,
    *,
    stop_on_close: bool = False,
    write_guard: WriteGuard = no_guard,
    claim_key: bytes | None = None,
    egress: SandboxEgress | None = None,
) -> Backend:
    """The backend SANDBOX_BACKEND names. ``stop_on_close``: ``dev`` stops the local
    processes or containers it ran as it exits; pods in a cluster, and the containers of
    ``serve``, outlive a controller restart. ``claim_key`` gives each new sandbox its
    claim secret (sandbox_contract.hook_key)."""
    if settings.backend == "kubernetes":
        from .backends.kubernetes import KubernetesBackend

        backend: Backend = await KubernetesBackend.connect(
            settings.kube_options(), write_guard=write_guard, claim_key=claim_key, egress=egress
        )
        return backend
    if settings.backend == "docker":
        from .backends.docker import DockerBackend

        return await DockerBackend.connect(
            settings.docker_options(),
            write_guard=write_guard,
            stop_on_close=stop_on_close,
            claim_key=claim_key,
            egress=egress,
        )
    from .backends.local import LocalBackend

    return LocalBackend(
        settings.state_dir,
        templates=settings.templates(),
        stop_on_close=stop_on_close,
        write_guard=write_guard,
        claim_key=claim_key,
        egress=egress,
    )


def sandbox_egress(settings: Settings, key: bytes) -> SandboxEgress | None:
    """Every sandbox's egress env (egress_env.py), or None with egress off. The CA
    bundle: on Kubernetes the pod's own (its init container builds it from the CA's
    ConfigMap); on the local backend the one ``dev`` writes (egress_bundle_path); on
    Docker one built here once from SANDBOX_EGRESS_CA_CERT_FILE, which the backend
    uploads into each container before it starts."""
    if settings.egress == "off":
        return None
    lists = settings.egress_lists
    bundle: str | None = None
    bundle_pem: bytes | None = None
    if settings.backend == "kubernetes" and settings.egress_ca_configmap:
        bundle = KUBE_BUNDLE
    elif settings.backend == "local" and egress_bundle_path(settings).exists():
        bundle = str(egress_bundle_path(settings))
    elif settings.backend == "docker":
        if settings.egress_ca_cert_file:
            bundle, bundle_pem = DOCKER_BUNDLE, sandbox_bundle(Path(settings.egress_ca_cert_file))
        else:
            log.warning(
                "egress is on but SANDBOX_EGRESS_CA_CERT_FILE is unset: sandboxes get no CA "
                "bundle, so TLS to secret hosts (intercepted) fails in them"
            )
    return SandboxEgress(
        key,
        settings.egress_proxy_address,
        lists.no_proxy,
        bundle,
        lists.secrets,
        settings.egress_ca_configmap if settings.backend == "kubernetes" else None,
        bundle_pem,
    )


def egress_bundle_path(settings: Settings) -> Path:
    """Where ``dev`` writes the local sandboxes' CA bundle (system roots + the CA)."""
    return Path(settings.state_dir) / "egress" / "bundle.pem"


class Controller:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        clock: Clock | None = None,
        store: Store | None = None,
        stop_sandboxes_on_exit: bool = False,
    ) -> None:
        self.settings = settings
        self._backend = backend
        # Pods in a cluster outlive the controller whatever it is asked (a restart adopts
        # them), so only local processes and containers stop, and their sessions end.
        self._stop_sandboxes_on_exit = stop_sandboxes_on_exit and settings.backend != "kubernetes"
        self.clock: Clock = clock or SystemClock()
        self.store = store or Store.open(settings.database_url, settings.store_timeout)
        # In a pod (SANDBOX_POD_NAME), the holder starts with the pod's name: a container
        # restarts only after its last process is gone, so a lease an earlier process of
        # this pod holds is a dead one's, taken over at once rather than at its TTL (a
        # new epoch fences it all the same). Elsewhere no process can know that.
        self.pod_holder_prefix = f"{settings.pod_name}/" if settings.pod_name else None
        self.holder = (
            f"{self.pod_holder_prefix or socket.gethostname() + '-'}"
            f"{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.token_secret = (settings.token_secret or "").encode()
        self.scheduler: Scheduler | None = None
        self.hooks: SandboxHooks | None = None  # made at start-up, with the token secret
        # Egress (issue 19): the keys that derive sandboxes' proxy credentials (the hook
        # keys, current first) and what seals their secrets; made at start-up.
        self.egress_keys: tuple[bytes, ...] = ()
        self.sealer: Sealer | None = None
        # Where suspended sessions' archives live (SANDBOX_SNAPSHOT_STORE); None: off.
        self.snapshot_store: SnapshotStore | None = open_store(settings)
        # In-cluster API callers (SANDBOX_TOKEN_REVIEW_USERS), made at start-up.
        self.token_reviewer: TokenReviewer | None = None
        self.lease = LeaseTerm(
            settings.leader_lease_ttl,
            settings.lease_margin,
            max_gap=settings.leader_renew_interval + settings.lease_margin,
        )
        # Did the last store call answer? False until the first one has.
        self.store_ok = False
        self.schema: SchemaState | None = None
        # The lease as last seen while standing by (who leads, until when); None leading.
        self.leader_seen: LeaseHolder | None = None
        self.metrics = ControllerMetrics(
            self.pool_snapshot, lambda: self.is_leader, pod_labels=self.pod_labels
        )
        self.audit_log = AuditLog(settings.audit_log_file)
        self.webhooks: Webhooks | None = None
        if settings.webhook_url and settings.webhook_secret:
            self.webhooks = Webhooks(
                settings.webhook_url,
                settings.webhook_secret.encode(),
                self.clock,
                queue_max=settings.webhook_queue_max,
                max_attempts=settings.webhook_max_attempts,
                timeout=settings.webhook_timeout,
                observe=self.metrics.webhook,
            )
        self._tasks = TaskGroup("controller")
        self._stopping = asyncio.Event()
        # Set by step_down: a process on its way out never takes the lease again (its
        # lease loop would otherwise win it back from the standby during the drain).
        self._retiring = False

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "the backend is made at start-up"
        return self._backend

    @property
    def verify_keys(self) -> tuple[str, ...]:
        """The public keys that verify the session tokens this controller signs: all a
        proxy needs (GET /internal/token-keys), and nothing that signs."""
        previous = self.settings.verifying_token_secrets
        return tuple(dict.fromkeys(public_key(s) for s in (self.token_secret, *previous)))

    @property
    def is_leader(self) -> bool:
        return self.scheduler is not None and self.scheduler.running

    @property
    def store_available(self) -> bool:
        scheduler = self.scheduler
        return self.store_ok and not (scheduler is not None and scheduler.store_down)

    @property
    def ready(self) -> bool:
        """Serving the API: leading, with the store answering (GET /readyz)."""
        return self.is_leader and self.store_available

    @property
    def healthy_replica(self) -> bool:
        """Fit to lead or to stand by: the schema, as last read from the store, is one
        this version knows (GET /readyz?role=replica, the pods' readiness probe). Not
        the store's health of the moment: during an outage every replica stays in its
        Service, so callers hear 503 store_unavailable with Retry-After rather than
        find no endpoint at all."""
        return self.schema in (SchemaState.CURRENT, SchemaState.BEHIND)

    def write_guard(self) -> None:
        """Called by the backend immediately before each write it sends."""
        if not self.lease.usable(self.clock.monotonic()):
            raise LeaseLost()

    def record(self, event: AuditEvent) -> None:
        """Where the leader's scheduler sends each committed state change: the audit
        log and, for the webhooks' events, the webhook queue. Neither waits."""
        self.audit_log.record(event)
        if self.webhooks is not None:
            self.webhooks.offer(event)

    # ------------------------------------------------------------ lifecycle

    async def startup(self) -> None:
        tracing.start(self.settings, "sandbox-controller")
        self.audit_log.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if not self.token_secret:
            # Fine for one process (dev); a separate proxy needs the same secret.
            self.token_secret = secrets.token_bytes(32)
            log.warning("SANDBOX_TOKEN_SECRET is not set; using a random one for this process")
        if self.settings.recovery_confirm:
            log.warning(
                "SANDBOX_RECOVERY_CONFIRM is set: pods serving sessions the store does not "
                "know will be deleted without holding; unset it once this start is done"
            )
        await wait_for_database(self.store, self.clock, self._stopping, timeout=60.0)
        self.store_ok = True
        hook_keys = self.settings.hook_keys(self.token_secret)
        self.egress_keys = hook_keys
        self.sealer = Sealer([self.token_secret, *self.settings.verifying_token_secrets])
        previous = [secret_key_id(s) for s in self.settings.verifying_token_secrets]
        # Which key signs, and which still verify: what an operator checks in a rotation.
        log.info(
            "session tokens signed with key %s%s; %d hook key(s)",
            secret_key_id(self.token_secret),
            f", also verifying {', '.join(previous)}" if previous else "",
            len(hook_keys),
        )
        users = split_list(self.settings.token_review_users)
        if users and self.token_reviewer is None:
            from .backends.kube_config import load_api_client
            from .backends.kube_token_review import TokenReviewer

            api = await load_api_client(self.settings.kubeconfig)
            self.token_reviewer = TokenReviewer(api, users, self.clock)
        if self.settings.hooks and self.hooks is None:
            self.hooks = SandboxHooks(
                hook_keys,
                timeout=self.settings.hook_timeout,
                release_timeout=self.settings.release_timeout,
            )
        if self._backend is None:
            self._backend = await make_backend(
                self.settings,
                stop_on_close=self._stop_sandboxes_on_exit,
                write_guard=self.write_guard,
                claim_key=hook_keys[0] if self.settings.hooks else None,
                egress=sandbox_egress(self.settings, hook_keys[0]),
            )
        await self._try_to_lead()
        self._tasks.start(self._lease_loop(), "lease")
        self._tasks.start(self._retention_loop(), "retention")

    async def step_down(self) -> None:
        """Stop scheduling and release the lease, so that a standby takes over at once
        (the first step of a graceful stop; the API answers 503 not_leader after it).
        A controller that stops its sandboxes as it exits (dev) first ends their
        sessions as ``controller_stopped``: their sandboxes will be gone, by intent."""
        scheduler = self.scheduler
        if self._stop_sandboxes_on_exit and scheduler is not None and scheduler.running:
            try:
                async with asyncio.timeout(END_SESSIONS_GRACE):
                    ended = await scheduler.end_all_sessions(EndReason.CONTROLLER_STOPPED)
            except Exception as exc:  # the next start ends them from the store instead
                log.warning("could not end the live sessions before stopping: %s", exc)
            else:
                if ended:
                    log.info("ended %d live session(s) as controller_stopped", ended)
        self._retiring = True
        await self._step_down(release=True)

    async def shutdown(self) -> None:
        self._stopping.set()
        await self._tasks.stop()
        await self._step_down(release=True)
        if self._backend is not None:
            await self._backend.close()
        if self.hooks is not None:
            await self.hooks.close()
        if self.snapshot_store is not None:
            await self.snapshot_store.close()
        if self.token_reviewer is not None:
            await self.token_reviewer.close()
        await self.store.close()
        if self.webhooks is not None:
            await self.webhooks.stop()
        self.audit_log.stop()
        tracing.stop()

    # ------------------------------------------------------------ leadership

    def _store_failed(self, what: str, exc: BaseException) -> None:
        if self.store_ok:
            log.warning("%s failed; the store is unavailable: %s", what, exc)
        self.store_ok = False

    def _store_answered(self) -> None:
        if not self.store_ok:
            log.info("the store answers again")
        self.store_ok = True

    async def _schema_known(self) -> bool:
        """Whether this version may write to the database's schema. A new database
        gets its schema here; one that a newer version migrated is left alone."""
        try:
            state = await self.store.schema()
            if state is SchemaState.EMPTY:
                await self.store.migrate()  # a replica racing us makes this fail: retried
                state = SchemaState.CURRENT
        except Exception as exc:
            self._store_failed("reading the schema version", exc)
            return False
        self._store_answered()
        if state is SchemaState.NEWER and self.schema is not SchemaState.NEWER:
            log.error(
                "the database schema is newer than this version knows; waiting (not ready) "
                "rather than writing to it: finish the upgrade, or roll the database back"
            )
        self.schema = state
        return state is not SchemaState.NEWER

    async def _acquire(self) -> int | None:
        """Take or renew the lease; None if another holds it. The lease counts from
        the moment the query was sent, never from its answer."""
        sent = self.clock.monotonic()
        epoch = await self.store.acquire_lease(
            self.holder,
            self.settings.leader_lease_ttl,
            self.clock.now(),
            succeeds=self.pod_holder_prefix,
        )
        self._store_answered()
        if epoch is not None:
            self.lease.renewed(sent)
        return epoch

    async def _try_to_lead(self) -> None:
        if self._retiring or not await self._schema_known():
            return
        try:
            epoch = await self._acquire()
        except Exception as exc:
            self._store_failed("asking for the leader lease", exc)
            return
        if epoch is None:
            await self._standing_by()
            return
        self.leader_seen = None
        log.info("leading with lease epoch %d as %s", epoch, self.holder)
        scheduler: Scheduler | None = None
        try:
            if self.schema is SchemaState.BEHIND:  # migrations only as leader
                await self.store.migrate()
                self.schema = SchemaState.CURRENT
            # A fresh list, then the watch from it: no standby backlog to replay. The
            # store's rows are read meanwhile: both wait mostly on another process (at
            # 10,000 pods, the API server's answer is most of a second).
            loading = asyncio.create_task(self.store.load(), name="controller:load")
            try:
                await self.backend.start()
                loaded = await loading
            finally:  # after a failed list: not left running, its error not left unread
                loading.cancel()
                await asyncio.gather(loading, return_exceptions=True)
            scheduler = Scheduler(
                limits=self.settings.limits(),
                store=self.store,
                backend=self.backend,
                clock=self.clock,
                observer=self.metrics,
                fence=Fence(self.holder, epoch),
                hooks=self.hooks,
                audit=self.record,
                snapshot_store=self.snapshot_store,
                snapshot_max_bytes=self.settings.snapshot_max_bytes,
            )
            scheduler.egress.sealer = self.sealer
            await scheduler.start(loaded)
        except Exception:
            log.exception("could not start leading; releasing the lease")
            await self._give_up_leading(scheduler, epoch)
            return
        if self._retiring:  # step_down came while this was starting: hand it over
            await self._give_up_leading(scheduler, epoch)
            return
        self.scheduler = scheduler
        await self._mark_leader(True)

    async def _give_up_leading(self, scheduler: Scheduler | None, epoch: int) -> None:
        if scheduler is not None:
            await scheduler.stop()
        await self.backend.stop()
        await self._release(epoch)

    async def _standing_by(self) -> None:
        """Say once per holder and epoch who leads, and how long until this process
        may take over: up to the lease's TTL after a leader killed without releasing it."""
        try:
            seen = await self.store.lease_holder()
        except Exception as exc:
            self._store_failed("reading the leader lease", exc)
            return
        before, self.leader_seen = self.leader_seen, seen
        if seen is None or (
            before is not None and (before.holder, before.epoch) == (seen.holder, seen.epoch)
        ):
            return
        log.info(
            "standing by: %s leads (lease epoch %d); taking over if it is not renewed "
            "within %.1f s",
            seen.holder,
            seen.epoch,
            max(0.0, seen.expires_at - self.clock.now()),
        )

    async def _step_down(self, *, release: bool) -> None:
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is None:
            return
        await scheduler.stop()
        await self.backend.stop()
        if release and scheduler.fence is not None:
            await self._release(scheduler.fence.epoch)
        self.lease.lost()
        await self._mark_leader(False)

    async def _mark_leader(self, leader: bool) -> None:
        """Label this controller's own pod while it leads (SANDBOX_POD_NAME, in the
        chart), so the controller Service routes to the leader alone."""
        backend, pod_name = self.backend, self.settings.pod_name
        if pod_name is None or not isinstance(backend, MarksLeader):
            return
        try:
            await backend.mark_leader(pod_name, leader)
        except Exception as exc:  # the Service lags; leadership itself is unaffected
            log.warning(
                "could not %s the leader label on %s: %s",
                "set" if leader else "remove",
                pod_name,
                exc,
            )

    async def _release(self, epoch: int) -> None:
        self.lease.lost()  # before the release: no write may follow it
        try:
            await self.store.release_lease(self.holder, epoch)
        except Exception as exc:
            # Harmless to leadership: the lease then ends at its TTL, and a standby takes
            # over only then rather than at once. Said, so a slow hand-over is explained.
            log.warning(
                "could not release the leader lease (epoch %d): %s; it ends at its TTL",
                epoch,
                exc,
            )

    async def _lease_loop(self) -> None:
        renew = self.settings.leader_renew_interval
        while True:
            interval = renew if self.scheduler is not None else min(renew, STANDBY_POLL)
            slept_at = self.clock.monotonic()
            self.lease.resting(slept_at)
            if await sleep_or_stop(self.clock, interval, self._stopping):
                return
            woke_at = self.clock.monotonic()
            if not self.lease.tick(woke_at) and self.scheduler is not None:
                log.warning(
                    "this process was paused (woke %.1f s late, more than the lease margin "
                    "of %.1f s); no write until the lease is confirmed",
                    woke_at - slept_at - interval,
                    self.lease.margin,
                )
            scheduler = self.scheduler
            if scheduler is None:
                await self._try_to_lead()
            elif not scheduler.running:
                log.error("scheduler stopped (%s); stepping down", scheduler.failed)
                await self._step_down(release=True)
            else:
                await self._renew(scheduler)

    async def _renew(self, scheduler: Scheduler) -> None:
        assert scheduler.fence is not None
        try:
            epoch = await self._acquire()
        except Exception as exc:
            self._store_failed("renewing the leader lease", exc)
            if not self.lease.usable(self.clock.monotonic()):
                log.error("the leader lease ran out while the store was unreachable")
                await self._step_down(release=False)
            return
        if epoch != scheduler.fence.epoch:
            log.error("lost the leader lease; stepping down")
            self.lease.lost()
            await self._step_down(release=False)
            return
        scheduler.lease_confirmed()

    async def _retention_loop(self) -> None:
        """Delete ended sessions past SANDBOX_ENDED_RETENTION, hourly, on the leader."""
        while True:
            if self.is_leader:
                cutoff = self.clock.now() - self.settings.ended_retention
                try:
                    purged = await self.store.delete_ended_before(cutoff)
                except Exception as exc:
                    log.warning("purging ended sessions failed: %s", exc)
                else:
                    if purged:
                        log.info("purged %d ended sessions", purged)
            if await sleep_or_stop(self.clock, RETENTION_EVERY, self._stopping):
                return

    # ------------------------------------------------------------ status

    def pool_snapshot(self, *, sessions_by_activity: bool = True) -> PoolStatus | None:
        """The pool now, as GET /pool and the metrics show it; None unless leading."""
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            return None
        return scheduler.snapshot(self.clock.monotonic(), sessions_by_activity=sessions_by_activity)

    def pod_labels(self) -> list[tuple[str, dict[str, str]]]:
        """Each session's pod and the labels that attribute it; none unless leading."""
        scheduler = self.scheduler
        if scheduler is None or not scheduler.running:
            return []
        return scheduler.pod_labels()
