"""A real Pool whose decisions can be made to raise, for the fault-injection tests: the
scheduler builds its pools from ``Rounds.pool_type``, and a test puts one of these
there. Everything else the pool does is the real thing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox_controller.model import Outcome, Session
from sandbox_controller.scheduler.pool import Pool


class DecisionBug(RuntimeError):
    """What an armed decision raises: a bug, as far as the scheduler can tell."""


@dataclass
class Faults:
    """Which decisions raise. Shared by every pool the scheduler builds (it rebuilds
    one after a failure), so the same input fails again and other inputs do not."""

    # The pool raises on opening a session for these threads, before deciding anything.
    open_threads: set[str] = field(default_factory=set)
    # It raises after handing over a pod to a session of these threads: the pool is
    # half-changed (the session ready, its pod assigned, its caller's answer queued).
    handover_threads: set[str] = field(default_factory=set)
    # The first tick at or after this time raises, after doing its work (once).
    tick_at: float | None = None
    # Each armed thread fails once, then is disarmed: a bug that strikes once. Else it
    # fails every time, the rebuild's own decisions too (a bug stored data triggers
    # keeps the rebuild failing, and callers refused, until it is fixed).
    once: bool = False
    raised: int = 0

    def fired(self, armed: set[str], thread_id: str) -> None:
        self.raised += 1
        if self.once:
            armed.discard(thread_id)

    def pool_type(self) -> type[Pool]:
        faults = self

        class ExplodingPool(Pool):
            def open_session(
                self,
                request_id: int,
                user_id: str,
                thread_id: str,
                wait_seconds: float,
                now: float,
                metadata: dict[str, str] | None = None,
                **kwargs: Any,
            ) -> None:
                if thread_id in faults.open_threads:
                    faults.fired(faults.open_threads, thread_id)
                    raise DecisionBug(f"opening {thread_id}")
                super().open_session(
                    request_id, user_id, thread_id, wait_seconds, now, metadata, **kwargs
                )

            def hand_over(self, session: Session, now: float, outcome: Outcome) -> None:
                super().hand_over(session, now, outcome)
                if session.thread_id in faults.handover_threads:
                    faults.fired(faults.handover_threads, session.thread_id)
                    raise DecisionBug(f"handing over to {session.thread_id}")

            def tick(self, now: float) -> None:
                super().tick(now)
                if faults.tick_at is not None and now >= faults.tick_at:
                    faults.tick_at = None
                    faults.raised += 1
                    raise DecisionBug("tick")

        return ExplodingPool
