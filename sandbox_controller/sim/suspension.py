"""Suspension in a replay: the sandbox hooks and the snapshot store, simulated.

With suspension on (``Limits.suspends_idle``), the real scheduler suspends idle
sessions and asks for snapshots and restores as in production; here each call answers
after the time its archive takes to stream (``ArchivePlatform``), the store keeps the
archives the scheduler recorded, and traffic on a suspended session's thread wakes it
as the proxy would. What it costs and saves is counted in ``SuspensionFigures``.

The simulation has no workspaces: every archive has one average size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..model import BusyAnswer
from ..scheduler.effects import Outbox
from ..scheduler.pool import Pool

NOT_BUSY = BusyAnswer(False, "simulated: the trace decides activity", answered=True)


@dataclass(frozen=True)
class ArchivePlatform:
    """How big an archive is and how fast it streams through the hooks and the store."""

    archive_bytes: int = 50 * 2**20
    bytes_per_second: float = 100e6
    call_seconds: float = 0.2  # each hook call's own latency

    def transfer_seconds(self) -> float:
        return self.call_seconds + self.archive_bytes / self.bytes_per_second


@dataclass
class SuspensionFigures:
    archive_bytes: int
    suspends: int = 0  # snapshots kept: pods given back
    resumes: int = 0  # archives restored: sessions back on a pod
    restore_failures: int = 0
    wakes: int = 0  # resumes asked by traffic on a suspended thread (the proxy's)
    resume_seconds: list[float] = field(default_factory=list)
    archives: dict[str, float] = field(default_factory=dict)  # key -> stored since
    peak_archives: int = 0
    archive_seconds: float = 0.0  # archives x seconds kept

    def advance(self, span: float) -> None:
        self.archive_seconds += len(self.archives) * span

    @property
    def peak_bytes(self) -> int:
        return self.peak_archives * self.archive_bytes

    @property
    def gib_hours(self) -> float:
        """Storage used over the run: archives x their size x hours kept."""
        return self.archive_seconds * self.archive_bytes / 2**30 / 3600.0

    def resume_percentile(self, q: float) -> float:
        if not self.resume_seconds:
            return 0.0
        ordered = sorted(self.resume_seconds)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


Schedule = Callable[[float, Callable[[float], None]], None]


class SimulatedHooks:
    """Answers the scheduler's hook calls and keeps the store's archives."""

    def __init__(self, pool: Pool, platform: ArchivePlatform, figures: SuspensionFigures) -> None:
        self.pool = pool
        self.platform = platform
        self.figures = figures

    def carry_out(self, out: Outbox, now: float, at: Schedule) -> None:
        pool, figures = self.pool, self.figures
        for claim in out.claims:  # accepted at once: claims are not what is measured
            at(now, _claimed(pool, claim.session_id, claim.attempt))
        for check in out.status_checks:
            at(now, _not_busy(pool, check.session_id))
        transfer = self.platform.transfer_seconds()
        for snap in out.snapshots:
            at(now + transfer, self._snapshot_done(snap.session_id, snap.attempt, snap.key))
        for restore in out.restores:
            at(now + transfer, _restored(pool, restore.session_id, restore.attempt))
        for key in out.archive_deletes:
            figures.archives.pop(key, None)
        figures.suspends += out.snapshot_outcomes.count("ok")
        figures.resumes += out.snapshot_outcomes.count("restored")
        figures.restore_failures += out.snapshot_outcomes.count("restore_failed")
        figures.resume_seconds.extend(out.resume_seconds)

    def _snapshot_done(self, session_id: str, attempt: int, key: str) -> Callable[[float], None]:
        def apply(now: float) -> None:
            # In the store first (the upload finished), recorded by the pool after: an
            # archive the pool does not record comes back in archive_deletes.
            self.figures.archives[key] = now
            self.figures.peak_archives = max(self.figures.peak_archives, len(self.figures.archives))
            self.pool.snapshot_taken(
                session_id, attempt, key, self.platform.archive_bytes, None, now
            )

        return apply


def _claimed(pool: Pool, session_id: str, attempt: int) -> Callable[[float], None]:
    return lambda now: pool.claim_answered(session_id, attempt, True, now)


def _not_busy(pool: Pool, session_id: str) -> Callable[[float], None]:
    return lambda now: pool.busy_answer(session_id, NOT_BUSY, now)


def _restored(pool: Pool, session_id: str, attempt: int) -> Callable[[float], None]:
    return lambda now: pool.restore_answered(session_id, attempt, None, now)
