"""Creates the controller made that the watch has not shown yet.

The cache lags the API server. Without this, a pool refill that runs between a
create's response and the watch event would see one pod too few and create another:
the over-creation kubernetes-sigs/agent-sandbox measured at ~10x under load. An
expectation lapses after ``timeout``, so a lost watch event cannot block creates forever.
"""

from __future__ import annotations

from ..clock import Clock


class CreateExpectations:
    def __init__(self, clock: Clock, timeout: float = 60.0) -> None:
        self.clock = clock
        self.timeout = timeout
        self._due: dict[str, float] = {}

    def expect(self, name: str) -> None:
        self._due[name] = self.clock.monotonic() + self.timeout

    def observe(self, name: str) -> bool:
        """The watch showed ``name``; True if we were waiting for it."""
        return self._due.pop(name, None) is not None

    def _lapse(self) -> None:
        now = self.clock.monotonic()
        for name in [n for n, due in self._due.items() if due <= now]:
            del self._due[name]

    def pending(self) -> int:
        self._lapse()
        return len(self._due)

    def is_pending(self, name: str) -> bool:
        self._lapse()
        return name in self._due
