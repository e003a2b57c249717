"""What the scheduler loop needs from around it: a store to commit rounds to, and an
observer to report to (the controller's metrics). Protocols, defined here, so the
scheduler depends on no metrics library and its tests can use in-memory fakes."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from ..backends.base import ErrorKind
from ..model import EndReason, Pod, Session, SessionPage, SessionQuery
from ..store import Batch, Fence

# What a rebuild starts from: the live sessions and every pod row.
Loaded = tuple[list[Session], list[Pod]]


class SchedulerStore(Protocol):
    async def load(self) -> Loaded:
        """Every live session (and the ended ones kept), and every pod row."""

    async def get_session(self, session_id: str) -> Session | None: ...

    async def list_sessions(self, user_id: str, limit: int = 100) -> list[Session]: ...

    async def query_sessions(self, query: SessionQuery) -> SessionPage: ...

    async def recent_ended(self, limit: int) -> list[Session]: ...

    async def write(self, batch: Batch, fence: Fence | None) -> None:
        """Commit one round in one transaction, or raise (store.Deposed: fenced off)."""

    async def purge_user(self, user_id: str) -> int:
        """Delete the user's ended sessions; how many rows went."""

    async def session_secrets(self, session_id: str) -> list[dict[str, Any]]:
        """A session's egress secret rows, values sealed."""

    async def record_denials(self, rows: list[dict[str, Any]], keep: int) -> None: ...

    async def denials(self, session_id: str, limit: int) -> list[dict[str, Any]]: ...


BackendOperation = Literal["create", "delete", "label"]
# What a sandbox's status hook said: busy, not busy, or nothing usable in time.
StatusAnswer = Literal["busy", "not_busy", "no_answer", "unauthorized"]


class LoopObserver(Protocol):
    def round_committed(self, commands: int) -> None:
        """One round decided this many commands and committed them in one transaction."""

    def store_failed(self) -> None:
        """A round's commit failed; the loop rebuilds its state from the store."""

    def backend_failed(self, operation: BackendOperation, kind: ErrorKind) -> None:
        """A backend call failed, temporarily or for good (its backend says which)."""

    def pod_started(self, seconds: float) -> None:
        """A pod turned ready this long after it was created."""

    def session_ended(self, reason: EndReason) -> None: ...

    def claim_hook_failed(self) -> None:
        """A claim hook failed or timed out; its pod is deleted, another is tried."""

    def status_answered(self, answer: StatusAnswer) -> None:
        """A status hook call (before an idle timeout or a reclaim) came back so."""

    def snapshot_outcome(self, outcome: str) -> None:
        """A snapshot or restore ended so (sandbox_snapshots_total's outcomes)."""

    def snapshot_stored(self, size: int) -> None:
        """An archive of this many bytes was kept."""

    def suspended(self, seconds: float) -> None:
        """A session was suspended, this long after its snapshot began."""

    def resumed(self, seconds: float) -> None:
        """A session was resumed, this long after its resume was asked for."""


class NoObserver:
    def round_committed(self, commands: int) -> None:
        pass

    def store_failed(self) -> None:
        pass

    def backend_failed(self, operation: BackendOperation, kind: ErrorKind) -> None:
        pass

    def pod_started(self, seconds: float) -> None:
        pass

    def session_ended(self, reason: EndReason) -> None:
        pass

    def claim_hook_failed(self) -> None:
        pass

    def status_answered(self, answer: StatusAnswer) -> None:
        pass

    def snapshot_outcome(self, outcome: str) -> None:
        pass

    def snapshot_stored(self, size: int) -> None:
        pass

    def suspended(self, seconds: float) -> None:
        pass

    def resumed(self, seconds: float) -> None:
        pass
