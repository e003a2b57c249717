"""The scheduler's egress book: sessions' secrets between their open and their first
commit, sealed into that commit's batch, and kept open (in memory) for the egress
proxy's authorize calls; and which pod a create id names.

A session's secrets reach the store in the transaction that first writes the session
(store.Batch.secrets), sealed under the token secret (egress_secrets.Sealer); the
transaction that ends it deletes them (store.db). Between its open and that commit the
session may already be claimed, so authorize reads the pending ones first.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..egress_secrets import Sealer
from ..model import Pod, SecretRef, Session
from ..store import Batch

log = logging.getLogger(__name__)

GONE_KEPT = 10_000


@dataclass(frozen=True)
class OpenSecret:
    """A secret with its value: only ever in memory, never in a repr or a log."""

    name: str
    value: str = field(repr=False)
    placeholder: str = field(repr=False)
    hosts: tuple[str, ...]
    header: str
    format: str

    @property
    def ref(self) -> SecretRef:
        return SecretRef(self.name, self.hosts, self.header)

    def wire(self) -> dict[str, Any]:
        """As the egress proxy is given it (POST /internal/egress/authorize)."""
        return {
            "name": self.name,
            "placeholder": self.placeholder,
            "value": self.value,
            "hosts": list(self.hosts),
            "header": self.header,
            "format": self.format,
        }


class EgressBook:
    def __init__(self) -> None:
        # Set by the controller (it holds the token secrets); None: no secret is taken.
        self.sealer: Sealer | None = None
        self._pending: dict[str, tuple[OpenSecret, ...]] = {}
        self._open: dict[str, tuple[OpenSecret, ...]] = {}
        self._pods_by_create_id: dict[str, str] = {}
        # Create ids of pods that left the pool, the latest GONE_KEPT (see ``gone``).
        self._gone: OrderedDict[str, None] = OrderedDict()

    def opened(self, session: Session, secrets: tuple[OpenSecret, ...]) -> None:
        """A new session with secrets: shown by name from now, sealed at its commit."""
        if secrets:
            session.secrets = tuple(s.ref for s in secrets)
            self._pending[session.id] = secrets

    def seal_into(self, batch: Batch, live: Mapping[str, Session]) -> None:
        """Add the sealed rows of every pending session this batch writes; forget the
        pending secrets of sessions that are gone (refused, or rebuilt away)."""
        if not self._pending:
            return
        written = {s.id for s in batch.sessions}
        for session_id in list(self._pending):
            if session_id in written:
                secrets = self._pending.pop(session_id)
                batch.secrets.extend(self._rows(session_id, secrets))
                self._open[session_id] = secrets
            elif session_id not in live:
                del self._pending[session_id]

    def _rows(self, session_id: str, secrets: Iterable[OpenSecret]) -> list[dict[str, Any]]:
        if self.sealer is None:
            raise RuntimeError("egress secrets without a sealer")
        return [
            {
                "session_id": session_id,
                "name": s.name,
                "sealed_value": self.sealer.seal(session_id, s.name, s.value),
                "placeholder": s.placeholder,
                "hosts": json.dumps(list(s.hosts)),
                "header": s.header,
                "value_format": s.format,
            }
            for s in secrets
        ]

    def known(self, session_id: str) -> tuple[OpenSecret, ...] | None:
        """The session's secrets if this process holds them open (None: ask the store)."""
        found = self._pending.get(session_id)
        return found if found is not None else self._open.get(session_id)

    def opened_rows(self, session_id: str, rows: list[dict[str, Any]]) -> tuple[OpenSecret, ...]:
        """The store's sealed rows opened (a row no key of ours opens is left out, and
        said in the log, by name only); kept for the next call."""
        found = []
        for row in rows:
            value = (
                self.sealer.open(session_id, row["name"], row["sealed_value"])
                if self.sealer
                else None
            )
            if value is None:
                log.warning(
                    "egress secret %s of session %s does not open: left out",
                    row["name"],
                    session_id,
                )
                continue
            found.append(
                OpenSecret(
                    row["name"],
                    value,
                    row["placeholder"],
                    tuple(json.loads(row["hosts"])),
                    row["header"],
                    row["value_format"],
                )
            )
        self._open[session_id] = tuple(found)
        return self._open[session_id]

    def forget(self, live: Mapping[str, Session]) -> None:
        """Drop the open secrets of sessions no longer live (called when pruning)."""
        for session_id in [sid for sid in self._open if sid not in live or not live[sid].live]:
            del self._open[session_id]

    def clear(self) -> None:
        """A rebuild: pending secrets die with the claims in flight (as env does)."""
        self._pending.clear()
        self._open.clear()
        self._pods_by_create_id.clear()
        self._gone.clear()

    def pod_of(self, create_id: str, pods: Mapping[str, Pod]) -> Pod | None:
        """The pod made by ``create_id``, if the pool has it. An index rebuilt on a miss:
        the caller has already proved the create id is one of ours (its credential)."""
        name = self._pods_by_create_id.get(create_id)
        pod = pods.get(name) if name is not None else None
        if pod is not None and pod.create_id == create_id:
            return pod
        before = self._pods_by_create_id
        self._pods_by_create_id = {p.create_id: n for n, p in pods.items() if p.create_id}
        for gone in before.keys() - self._pods_by_create_id.keys():
            self._gone[gone] = None
        while len(self._gone) > GONE_KEPT:
            self._gone.popitem(last=False)
        name = self._pods_by_create_id.get(create_id)
        return pods.get(name) if name is not None else None

    def gone(self, create_id: str) -> bool:
        """Whether the pod made by ``create_id`` was in the pool and has left it (deleted:
        its session, if it had one, has ended). A pod never seen is not gone: its create
        may not be answered yet."""
        return create_id in self._gone
