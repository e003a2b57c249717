"""Objects, one global resourceVersion counter, a bounded history, and watchers.

Every write replaces the stored dict with a new one, so the snapshots held in history
and in watcher queues never change under a reader: a watch event always shows the
object as it was at that resourceVersion, as etcd would.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .selectors import Matcher

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

KINDS = {
    "pods": "Pod",
    "events": "Event",
    "configmaps": "ConfigMap",
    "nodes": "Node",
    "poddisruptionbudgets": "PodDisruptionBudget",
}
CLUSTER_SCOPED = {"nodes"}
# The API group/version each resource is served under (core/v1 unless named here).
GROUP_VERSIONS = {"poddisruptionbudgets": "policy/v1"}


def api_version(resource: str) -> str:
    return GROUP_VERSIONS.get(resource, "v1")


# The alphabet the API server draws generateName suffixes from (no vowels, no lookalikes).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339(at: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if at is None else at))


class ApiError(Exception):
    """An API answer other than success, rendered as a ``kind: Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: str, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{resource} "{name}" not found', details={"name": name, "kind": resource}
    )


def conflict(resource: str, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details={"name": name, "kind": resource},
    )


@dataclass(frozen=True)
class Change:
    rv: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    old: Obj | None


class Watcher:
    def __init__(self, resource: str, namespace: str | None, match: Matcher) -> None:
        self.resource = resource
        self.namespace = namespace
        self.match = match
        self.queue: asyncio.Queue[tuple[str, Obj] | None] = asyncio.Queue()

    def translate(self, change: Change) -> tuple[str, Obj] | None:
        """What this watcher sees: an object entering its selector is ADDED to it, one
        leaving it is DELETED from it, as with the API server's watch cache."""
        if change.resource != self.resource:
            return None
        if self.namespace is not None and change.obj["metadata"].get("namespace") != self.namespace:
            return None
        now = self.match(change.obj)
        before = change.old is not None and self.match(change.old)
        if change.type == "DELETED":
            return ("DELETED", change.obj) if now else None
        if now and before:
            return ("MODIFIED", change.obj)
        if now:
            return ("ADDED", change.obj)
        if before:
            return ("DELETED", change.obj)
        return None

    def cut(self) -> None:
        self.queue.put_nowait(None)


class Expired(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


class Store:
    def __init__(self, history_limit: int = 10_000, seed: int | None = None) -> None:
        self.rv = 1000  # real clusters never start at 1; starting higher catches int/str bugs
        self._objects: dict[str, dict[Key, Obj]] = {r: {} for r in KINDS}
        self._history: deque[Change] = deque()
        self._history_limit = history_limit
        self._floor = self.rv  # a watch may resume from any rv >= floor
        self._watchers: set[Watcher] = set()
        self._rng = random.Random(seed)
        self.listeners: list[Callable[[Change], None]] = []

    # -- reads -------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        obj = self._objects[resource].get((namespace, name))
        if obj is None:
            raise not_found(resource, name)
        return obj

    def find(self, resource: str, namespace: str, name: str) -> Obj | None:
        return self._objects[resource].get((namespace, name))

    def query(self, resource: str, namespace: str | None, match: Matcher) -> list[Obj]:
        items = [
            obj
            for (ns, _), obj in self._objects[resource].items()
            if (namespace is None or ns == namespace) and match(obj)
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return items

    def count(self, resource: str) -> int:
        return len(self._objects[resource])

    # -- writes ------------------------------------------------------------------------

    def _commit(self, resource: str, type_: str, obj: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if type_ == "DELETED":
            self._objects[resource].pop(key, None)
        else:
            self._objects[resource][key] = obj
        change = Change(self.rv, resource, type_, obj, old)
        self._history.append(change)
        while len(self._history) > self._history_limit:
            self._floor = self._history.popleft().rv
        for watcher in self._watchers:
            seen = watcher.translate(change)
            if seen is not None:
                watcher.queue.put_nowait(seen)
        for listener in self.listeners:
            listener(change)
        return obj

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(
                    422, "Invalid", f"{resource} is invalid: metadata.name: Required value"
                )
            meta["name"] = prefix + "".join(self._rng.choices(_NAME_ALPHABET, k=5))
        if resource in CLUSTER_SCOPED:
            meta.pop("namespace", None)
        else:
            meta["namespace"] = namespace
        if self.find(resource, meta.get("namespace", ""), meta["name"]) is not None:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{resource} "{meta["name"]}" already exists',
                details={"name": meta["name"], "kind": resource},
            )
        meta["uid"] = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("resourceVersion", None)
        meta.pop("deletionTimestamp", None)
        obj["kind"] = KINDS[resource]
        obj["apiVersion"] = api_version(resource)
        return self._commit(resource, "ADDED", obj, None)

    def update(self, resource: str, namespace: str, name: str, obj: Obj) -> Obj:
        """A client's update: a stale metadata.resourceVersion is a 409 Conflict."""
        old = self.get(resource, namespace, name)
        wanted = obj.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise conflict(resource, name)
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        # Fields the server owns; a client cannot change them with an update.
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
        if new == old:  # the server writes nothing (and bumps nothing) for a no-op
            return old
        return self._commit(resource, "MODIFIED", new, old)

    def mutate(self, resource: str, namespace: str, name: str, fn: Callable[[Obj], None]) -> Obj:
        """A controller-side write (scheduler, kubelet): no precondition."""
        old = self.get(resource, namespace, name)
        new = copy.deepcopy(old)
        fn(new)
        if new == old:
            return old
        return self._commit(resource, "MODIFIED", new, old)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        old = self.get(resource, namespace, name)
        return self._commit(resource, "DELETED", copy.deepcopy(old), old)

    # -- watch -------------------------------------------------------------------------

    def subscribe(
        self, resource: str, namespace: str | None, match: Matcher, since: str | None
    ) -> tuple[list[tuple[str, Obj]], Watcher]:
        """Events a watch from ``since`` must send first, and a watcher for the rest.

        No rv (or "0") means: current state as ADDED events, then changes. A resumable
        rv means: every change after it. An rv older than the history is Expired (410).
        """
        watcher = Watcher(resource, namespace, match)
        backlog: list[tuple[str, Obj]] = []
        if not since or since == "0":
            backlog = [("ADDED", obj) for obj in self.query(resource, namespace, match)]
        else:
            try:
                start = int(since)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version {since!r}") from None
            if start < self._floor:
                raise Expired(start, self._floor)
            for change in self._changes_after(start):
                seen = watcher.translate(change)
                if seen is not None:
                    backlog.append(seen)
        self._watchers.add(watcher)
        return backlog, watcher

    def _changes_after(self, rv: int) -> Iterable[Change]:
        return (c for c in self._history if c.rv > rv)

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def cut_watches(self) -> int:
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.cut()
        return len(watchers)

    def compact(self) -> None:
        """Forget all history, as etcd compaction does: older watches now get 410."""
        self._history.clear()
        self._floor = self.rv
