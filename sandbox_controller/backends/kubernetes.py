"""The Kubernetes backend: sandbox pods as bare Pods, known through a watch-fed cache.

Every decision reads the cache; the API server sees one List per (re)sync, one Watch
stream per resource, and the writes the scheduler asks for. Each call passes a token
bucket, creates pass a semaphore, and retryable failures back off with jitter.

The cache and the watch live only while this process leads (start() to stop()): a
standby holds no pods and no backlog, and a new leader begins from a fresh list. Every
write passes the write guard immediately before it is sent, each retry included, so a
process whose lease may have ended sends nothing (docs/architecture.md invariant 14).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s

from ..aiotasks import TaskGroup
from ..aiotime import Backoff
from ..clock import Clock, SystemClock
from ..config import KubeOptions
from ..egress_env import SandboxEgress, with_egress_bundle
from ..model import DEFAULT_TEMPLATE, TemplateLimits
from ..sandbox_contract import claim_env
from ..templates import Template
from .base import (
    LABEL_CREATE_ID,
    LABEL_INSTANCE,
    LABEL_LEADER,
    LABEL_MANAGED_BY,
    LABEL_STATE,
    LABEL_TEMPLATE,
    MANAGED_BY,
    BackendError,
    ErrorKind,
    LabelState,
    PodEvent,
    PodPhase,
    PodStatus,
    WriteGuard,
    no_guard,
    shape_env,
    shape_of,
)
from .expectations import CreateExpectations
from .kit import EventFeed
from .kube_budget import BudgetKeeper
from .kube_cache import Obj, PodCache, resource_version, running_unready
from .kube_config import load_api_client, resolve_namespace
from .kube_readiness import DirectReadiness, probe_target
from .kube_template import (
    ASSIGNED_ANNOTATIONS,
    build_pod,
    default_template,
    for_template,
    load_template,
    pod_port,
    template_hash,
    with_resources,
)
from .ratelimit import TokenBucket, parse_retry_after

log = logging.getLogger(__name__)

GENERATE_NAME_ATTEMPTS = 3
# A retryable call is tried this many times more before its error is raised.
MAX_RETRIES = 8
# How long a create the API server answered may go unseen by the watch before the
# cache stops counting on it (a watch that lost it will relist it anyway).
EXPECTATION_TIMEOUT = 60.0
# Spread over 4-6 minutes so many controllers do not reconnect in step.
WATCH_TIMEOUT = 300.0

RETRYABLE = {0, 429, 500, 502, 503, 504}
# Refusals no later attempt changes until someone fixes something: a bad request, bad
# credentials, RBAC (403), a missing namespace (404 on a create), an invalid pod (422,
# admission). Everything else (409, 429, 5xx, no answer at all) may pass later.
PERMANENT = {400, 401, 403, 404, 422}
# Failures after which a write may have happened all the same: no answer at all, or a
# server or gateway giving up on it (a 504 from the API server often follows a commit).
AMBIGUOUS = {0, 500, 502, 503, 504}
_CONNECTION_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


class KubeError(BackendError):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(
            f"kubernetes API {status}: {message}",
            retryable=status in RETRYABLE,
            kind=ErrorKind.PERMANENT if status in PERMANENT else ErrorKind.TEMPORARY,
        )
        self.status = status
        self.retry_after = retry_after


class _Gone(Exception):
    """The watch's resourceVersion is older than the server's history: relist."""


@dataclass
class _Feed:
    """One list+watch loop: pods, or Warning events about pods."""

    name: str
    list_fn: Callable[..., Any]
    selector: dict[str, Any]  # list_fn keyword arguments: label or field selector
    on_list: Callable[[list[Obj], str], list[PodEvent]]
    on_event: Callable[[str, Obj], list[PodEvent]]
    rv: str | None = None
    failures: int = 0


class KubernetesBackend:
    def __init__(
        self,
        api: k8s.ApiClient,
        options: KubeOptions,
        *,
        clock: Clock | None = None,
        write_guard: WriteGuard = no_guard,
        claim_key: bytes | None = None,
        egress: SandboxEgress | None = None,
    ) -> None:
        self.api = api
        # With egress on: each pod's proxy env, and its CA bundle (egress_env.py).
        self.egress = egress
        # Each pod's claim secret derives from it and the pod's create id; None: none.
        self.claim_key = claim_key
        self.core = k8s.CoreV1Api(api)
        self.policy = k8s.PolicyV1Api(api)
        # The PodDisruptionBudget over assigned pods whose minAvailable this keeps
        # (kube_budget.py); None: none.
        self.budget_name = options.disruption_budget
        self.budget_interval = options.budget_interval
        self._budget: BudgetKeeper | None = None
        self._assigned: set[str] = set()  # assigned pods, neither failed nor terminating
        self.namespace = resolve_namespace(options.namespace, options.kubeconfig)
        self.template: Obj = (
            load_template(options.template_path)
            if options.template_path
            else default_template(options.tmp_dir_size_limit, options.rootfs_size_limit)
        )
        # Each template's pod template (templates.py), the default first; its hash
        # changes only when that template does, so only its pods roll.
        templates = options.templates or default_templates_for_kube()
        self.default_template = templates[0].name
        self.templates = {t.name: for_template(self.template, t) for t in templates}
        # Egress on or off, or its proxy moved: a pod of the other kind rolls.
        marks = {"egress": egress.fingerprint()} if egress is not None else {}
        self.template_hashes = {
            name: template_hash({**t, **marks}) for name, t in self.templates.items()
        }
        self.template = self.templates[self.default_template]
        self.template_hash = self.template_hashes[self.default_template]
        self.template_configmap = options.template_configmap
        self.clock = clock or SystemClock()
        self.write_guard = write_guard
        self.bucket = TokenBucket(options.qps, options.burst, self.clock)
        self.backoff = Backoff(options.retry_base, options.retry_cap)
        self._owns_api = False
        self._create_slots = asyncio.Semaphore(options.max_concurrent_creates)
        self._expectations = CreateExpectations(self.clock, EXPECTATION_TIMEOUT)
        self._cache = PodCache(pod_port(self.template))
        self._feed = EventFeed()  # open from start() to stop()
        self._tasks = TaskGroup("kubernetes-backend")
        self._owner: Obj | None = None
        self._rng = random.Random()
        # Readiness seen directly while sessions wait (kube_readiness.py); None: the
        # kubelet's word alone (turned off, or a probe we cannot ask as it would).
        target = probe_target(self.template) if options.direct_readiness else None
        self._direct = (
            DirectReadiness(
                target,
                clock=self.clock,
                answered=lambda name: self._emit([self._cache.answered(name)]),
                unconfirmed=lambda name: self._emit([self._cache.unanswered(name)]),
                interval=options.readiness_interval,
            )
            if target is not None
            else None
        )
        # Resyncs so far; tests read it to know that a 410 Gone was followed by a list.
        self.relists = 0

    @classmethod
    async def connect(
        cls,
        options: KubeOptions,
        *,
        clock: Clock | None = None,
        write_guard: WriteGuard = no_guard,
        claim_key: bytes | None = None,
        egress: SandboxEgress | None = None,
    ) -> KubernetesBackend:
        """A backend with an API client of its own (closed with the backend)."""
        api = await load_api_client(options.kubeconfig)
        backend = cls(
            api, options, clock=clock, write_guard=write_guard, claim_key=claim_key, egress=egress
        )
        backend._owns_api = True
        return backend

    @property
    def pod_selector(self) -> str:
        """The pods this controller owns: its own label, narrowed to the template's
        ``app.kubernetes.io/instance`` when it has one (the chart sets the release
        name). Two releases in one namespace then never take each other's pods for
        strays to delete."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        instance = ((self.template.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE)
        return f"{selector},{LABEL_INSTANCE}={instance}" if instance else selector

    # -- calls -------------------------------------------------------------------------

    async def _call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        write: bool = False,
        done_already: Callable[[], Awaitable[Obj | None]] | None = None,
        **kwargs: Any,
    ) -> Obj:
        """One API call, paced by the bucket and retried while the failure is retryable.
        A ``write`` asks the write guard first, each attempt, after any wait: the
        last moment before the request leaves. ``done_already`` is asked before each
        retry of a write whose failure leaves it unknown whether the server carried it
        out; what it finds is the answer."""
        attempt = 0
        while True:
            await self.bucket.acquire()
            if write:
                self.write_guard()
            try:
                response = await fn(*args, _preload_content=False, **kwargs)
                try:
                    raw = await response.read()
                finally:
                    response.release()
                if 200 <= response.status < 300:
                    result: Obj = json.loads(raw) if raw else {}
                    return result
                error = _error(response.status, raw, response.headers.get("Retry-After"))
            except _CONNECTION_ERRORS as exc:
                error = KubeError(0, f"{type(exc).__name__}: {exc}")
            if not error.retryable or attempt >= MAX_RETRIES:
                raise error
            delay = self.backoff.delay(attempt, error.retry_after)
            log.debug("retrying in %.2fs after %s", delay, error)
            attempt += 1
            await self.clock.sleep(delay)
            if done_already is not None and error.status in AMBIGUOUS:
                found = await done_already()
                if found is not None:
                    return found

    # -- the protocol ------------------------------------------------------------------

    async def start(self) -> None:
        if self.template_configmap and self._owner is None:
            await self._find_owner(self.template_configmap)
        # A new term begins from nothing: whatever an earlier one saw is history.
        self._cache = PodCache(pod_port(self.template))
        self._expectations = CreateExpectations(self.clock, EXPECTATION_TIMEOUT)
        self._assigned = set()
        if self.budget_name:
            self._budget = BudgetKeeper(
                self.budget_name, self._write_budget, self.clock, self.budget_interval
            )
        self._feed.begin()
        pods = _Feed(
            "pods",
            self.core.list_namespaced_pod,
            {"label_selector": self.pod_selector},
            self._pods_listed,
            self._pod_event,
        )
        warnings = _Feed(
            "events",
            self.core.list_namespaced_event,
            {"field_selector": "type=Warning,involvedObject.kind=Pod"},
            lambda items, rv: self._cache.replace_warnings(items),
            self._warning_event,
        )
        feeds = [pods, warnings]
        # The first lists happen here, so resync() is complete when start returns.
        for feed in feeds:
            await self._list(feed)
        for feed in feeds:
            self._tasks.start(self._reflect(feed), f"watch {feed.name}")
        if self._budget is not None:
            self._tasks.start(self._budget.run(), f"budget {self.budget_name}")

    async def _write_budget(self, min_available: int) -> None:
        await self._call(
            self.policy.patch_namespaced_pod_disruption_budget,
            self.budget_name,
            self.namespace,
            {"spec": {"minAvailable": min_available}},
            write=True,
            _content_type="application/merge-patch+json",
        )

    async def _find_owner(self, name: str) -> None:
        try:
            cm = await self._call(self.core.read_namespaced_config_map, name, self.namespace)
        except KubeError as exc:
            if exc.status != 404:
                raise
            log.warning("pod template ConfigMap %s not found: pods get no ownerReference", name)
            return
        self._owner = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": name,
            "uid": cm["metadata"]["uid"],
            # Not a controller reference: this controller, not the ConfigMap, manages
            # the pods; the reference only lets helm uninstall garbage-collect them.
            "controller": False,
            "blockOwnerDeletion": False,
        }

    async def create_pod(self, labels: Mapping[str, str]) -> str:
        # A name of our own for this create: if its answer is lost, a retry first looks
        # for the pod by it, so a create that did happen never makes a second pod.
        create_id = uuid.uuid4().hex
        labels = {**labels, LABEL_CREATE_ID: create_id}
        env = claim_env(self.claim_key, create_id)
        if self.egress is not None:
            env.update(self.egress.env(create_id))
        shape = shape_of(labels, self.default_template)
        template = self.templates.get(shape.template)
        if template is None:
            raise BackendError(f"no template {shape.template}", kind=ErrorKind.PERMANENT)
        labels[LABEL_TEMPLATE] = shape.template
        env.update(shape_env(shape))
        hash_ = self.template_hashes[shape.template]
        body = build_pod(template, labels, hash_, self._owner, env)
        if shape.resources is not None:
            with_resources(body, shape.resources)
        if self.egress is not None and self.egress.ca_configmap:
            with_egress_bundle(body, self.egress.ca_configmap)
        async with self._create_slots:
            pod = await self._create_with_fresh_name(body)
            # No await from here on: the watch cannot slip in between these lines.
            name = str(pod["metadata"]["name"])
            if name not in self._cache:
                self._expectations.expect(name)
                self._emit([self._cache.upsert(pod)])
        return name

    async def _create_with_fresh_name(self, body: Obj) -> Obj:
        """generateName draws a 5-character suffix; among thousands of pods a draw can
        collide (409 AlreadyExists). The pod was not created, so ask again at once."""
        create_id = body["metadata"]["labels"][LABEL_CREATE_ID]

        async def created_already() -> Obj | None:
            found = await self._call(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=f"{LABEL_CREATE_ID}={create_id}",
            )
            items: list[Obj] = found.get("items") or []
            return items[0] if items else None

        create = self.core.create_namespaced_pod
        for _ in range(GENERATE_NAME_ATTEMPTS - 1):
            try:
                return await self._call(
                    create, self.namespace, body, write=True, done_already=created_already
                )
            except KubeError as exc:
                if exc.status != 409:
                    raise
        return await self._call(
            create, self.namespace, body, write=True, done_already=created_already
        )

    async def delete_pod(self, name: str) -> None:
        try:
            await self._call(self.core.delete_namespaced_pod, name, self.namespace, write=True)
        except KubeError as exc:
            if exc.status != 404:
                raise

    async def set_labels(self, name: str, labels: Mapping[str, str]) -> None:
        patch: Obj = {"metadata": {"labels": dict(labels)}}
        if labels.get(LABEL_STATE) == LabelState.ASSIGNED:
            # Leased to a session: from now on no autoscaler may take its node. Warm
            # pods carry none of these, so idle pods never pin a node.
            patch["metadata"]["annotations"] = dict(ASSIGNED_ANNOTATIONS)
        await self._call(
            self.core.patch_namespaced_pod,
            name,
            self.namespace,
            patch,
            write=True,
            _content_type="application/merge-patch+json",
        )

    async def resync(self) -> list[PodStatus]:
        return self._feed.resync(self._cache.statuses())

    async def mark_leader(self, pod_name: str, leader: bool) -> None:
        """The controller's own pod carries LABEL_LEADER while it leads, and the
        controller Service selects that label. Taking the label (and clearing it from
        a controller pod that led before: killed, or paused and deposed) is a leader's
        write and passes the write guard. Dropping its own label is the one write a
        non-leader makes, and only to its own pod. Never a sandbox pod: one carries
        our managed-by label, and is refused here."""
        if leader:
            stale = await self._call(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=f"{LABEL_LEADER}=true,{LABEL_MANAGED_BY}!={MANAGED_BY}",
            )
            for pod in stale.get("items") or []:
                if pod["metadata"]["name"] != pod_name:
                    await self._label_controller_pod(pod["metadata"]["name"], None, write=True)
        await self._label_controller_pod(pod_name, "true" if leader else None, write=leader)

    async def _label_controller_pod(self, name: str, value: str | None, *, write: bool) -> None:
        pod = await self._call(self.core.read_namespaced_pod, name, self.namespace)
        labels = pod.get("metadata", {}).get("labels") or {}
        if labels.get(LABEL_MANAGED_BY) == MANAGED_BY:
            raise BackendError(f"{name} is a sandbox pod, not a controller's", retryable=False)
        if labels.get(LABEL_LEADER) == value:
            return
        await self._call(
            self.core.patch_namespaced_pod,
            name,
            self.namespace,
            {"metadata": {"labels": {LABEL_LEADER: value}}},  # null removes it
            write=write,
            _content_type="application/merge-patch+json",
        )

    def events(self) -> AsyncIterator[PodEvent]:
        return self._feed.events()

    def sessions_waiting(self, count: int) -> None:
        """While sessions wait for a pod, pods that run but are not Ready yet are
        probed directly (kube_readiness.py); with none waiting, the kubelet decides."""
        if self._direct is not None:
            self._direct.set_waiting(count)

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._direct is not None:
            await self._direct.stop()
        self._feed.end()
        self._cache = PodCache(pod_port(self.template))
        self._budget = None  # a standby writes nothing; the next term writes afresh

    async def close(self) -> None:
        await self.stop()
        if self._owns_api:
            await self.api.close()

    # -- the cache ---------------------------------------------------------------------

    def _emit(self, events: list[PodEvent | None]) -> None:
        for event in events:
            if event is not None:
                self._count_assigned(event)
                self._feed.put(event)
        if self._budget is not None:
            self._budget.want(len(self._assigned))

    def _count_assigned(self, event: PodEvent) -> None:
        """The pods the disruption budget protects: assigned, neither failed nor
        being deleted (those are no longer healthy to the budget anyway)."""
        pod = event.pod
        if (
            not event.deleted
            and pod.label_state is LabelState.ASSIGNED
            and not pod.terminating
            and pod.phase is not PodPhase.FAILED
        ):
            self._assigned.add(pod.name)
        else:
            self._assigned.discard(pod.name)

    def _pods_listed(self, items: list[Obj], rv: str) -> list[PodEvent]:
        listed_at = int(rv) if rv.isdigit() else 0
        for pod in items:
            self._expectations.observe(pod["metadata"]["name"])

        def created_since(pod: Obj) -> bool:
            # Our own create, answered after the list was taken: not gone, just newer.
            return self._expectations.is_pending(pod["metadata"]["name"]) and (
                resource_version(pod) > listed_at
            )

        before = {status.name for status in self._cache.statuses()}
        events = self._cache.replace(items, created_since)
        for name in before | {pod["metadata"]["name"] for pod in items}:
            self._track_readiness(name)
        return events

    def _pod_event(self, type_: str, pod: Obj) -> list[PodEvent]:
        name = pod["metadata"]["name"]
        self._expectations.observe(name)
        if type_ == "DELETED":
            event = self._cache.remove(name, pod)
        else:
            event = self._cache.upsert(pod)
        self._track_readiness(name)
        return [event] if event is not None else []

    def _track_readiness(self, name: str) -> None:
        """Tell the direct prober whether ``name`` runs unready (to probe while
        sessions wait) or not (no more probes; an answer of ours already given waits
        for the kubelet's confirmation until the kubelet speaks or the pod goes)."""
        if self._direct is None:
            return
        pod = self._cache.raw(name)
        ip = running_unready(pod) if pod is not None else None
        answered = self._cache.is_answered(name)
        if ip is not None and not answered:
            self._direct.unready(name, ip)
        else:
            self._direct.settled(name, confirmed=not answered)

    def _warning_event(self, type_: str, event: Obj) -> list[PodEvent]:
        if type_ == "DELETED":
            return []
        return [e for e in [self._cache.warn(event)] if e is not None]

    # -- list and watch ----------------------------------------------------------------

    async def _list(self, feed: _Feed) -> None:
        body = await self._call(feed.list_fn, self.namespace, **feed.selector)
        rv = str(body.get("metadata", {}).get("resourceVersion", ""))
        self._emit(list(feed.on_list(body.get("items") or [], rv)))
        feed.rv = rv

    async def _reflect(self, feed: _Feed) -> None:
        while True:
            try:
                if feed.rv is None:
                    self.relists += 1
                    await self._list(feed)
                started = self.clock.monotonic()
                if not await self._watch(feed) and self.clock.monotonic() - started < 1.0:
                    # A stream that ends at once with nothing in it is a failure in
                    # disguise (a proxy, a broken server): back off rather than spin.
                    raise KubeError(0, "watch stream ended at once")
            except _Gone:
                log.info("%s watch expired at %s; relisting", feed.name, feed.rv)
                feed.rv = None
            except (BackendError, ValueError, *_CONNECTION_ERRORS) as exc:
                delay = self.backoff.delay(feed.failures)
                feed.failures += 1
                log.info("%s watch failed (%s); again in %.2fs", feed.name, exc, delay)
                await self.clock.sleep(delay)

    async def _watch(self, feed: _Feed) -> bool:
        """Follow one watch stream to its end; True if it carried any event."""
        await self.bucket.acquire()
        timeout = int(WATCH_TIMEOUT * (0.8 + 0.4 * self._rng.random()))
        response = await feed.list_fn(
            self.namespace,
            watch=True,
            resource_version=feed.rv,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=timeout + 30, sock_connect=10),
            **feed.selector,
        )
        try:
            if response.status == 410:
                raise _Gone()
            if response.status != 200:
                raw = await response.read()
                raise _error(response.status, raw, response.headers.get("Retry-After"))
            feed.failures = 0
            seen = False
            while True:
                line = await response.content.readline()
                if not line:
                    return seen  # the server's timeout: resume from feed.rv at once
                if line.strip():
                    self._handle(feed, json.loads(line))
                    seen = True
        finally:
            response.close()

    def _handle(self, feed: _Feed, event: Obj) -> None:
        type_ = event.get("type", "")
        obj = event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise KubeError(int(obj.get("code") or 500), str(obj.get("message", "")))
        if type_ != "BOOKMARK":
            self._emit(list(feed.on_event(type_, obj)))
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv:
            feed.rv = str(rv)


def _error(status: int, raw: bytes, retry_after: str | None) -> KubeError:
    message = raw.decode(errors="replace")[:300]
    try:
        message = json.loads(raw).get("message", message)
    except (ValueError, AttributeError):
        pass
    return KubeError(status, message, parse_retry_after(retry_after))


def default_templates_for_kube() -> tuple[Template, ...]:
    """No templates: one, the pod template as it is."""
    return (Template(DEFAULT_TEMPLATE, TemplateLimits(DEFAULT_TEMPLATE)),)
