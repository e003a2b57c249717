"""Claims: pods leased to a session whose claim hook has not answered yet.

With the sandbox hooks on, a pod handed to a session is first *claimed*: the loop
delivers the session (and the caller's env and files, which it alone holds) to the
pod's ``POST /_sandbox/claim``, and only an accepting answer makes the session ready.
Meanwhile the pod is assigned (it never serves anyone else) and the session stays
provisioning. Each claim call is one *attempt*, numbered, so an answer that comes
back after its attempt was given up (a fallback deadline, a DELETE, a failed pod) is
recognised as late and ignored. ``Claims`` keeps the attempts; ``Claiming`` decides
(pure, ``now`` passed in), over the pool's shared state (core.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..model import Outcome, Pod, PodState, Session
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import ClaimCall

# The pool's own deadline for a claim answer: the loop's call is bounded by the hook
# timeout; this margin covers the loop's round trip, so a lost answer (a cancelled
# effect, a bug) can never leave a session provisioning for good.
CLAIM_MARGIN = 1.0


@dataclass(frozen=True)
class Claim:
    attempt: int
    pod_name: str
    warm: bool  # answered "warm" once accepted: the pod came from the warm pool
    due: float  # given up as failed if not answered by then (CLAIM_MARGIN)


class Claims:
    def __init__(self) -> None:
        self._by_session: dict[str, Claim] = {}
        # Which request's payload (env, files) a session's claims deliver, until the
        # session is handed over or ends: then the loop may forget the payload.
        self._payload_of: dict[str, int] = {}
        self._attempts = itertools.count(1)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_session

    def __len__(self) -> int:
        return len(self._by_session)

    def get(self, session_id: str) -> Claim | None:
        return self._by_session.get(session_id)

    def start(self, session: Session, pod: Pod, warm: bool, due: float) -> ClaimCall:
        """A new attempt (the session's only current one) and the call to make."""
        assert pod.create_id is not None and pod.address is not None
        claim = Claim(next(self._attempts), pod.name, warm, due)
        self._by_session[session.id] = claim
        return ClaimCall(
            claim.attempt,
            session.id,
            session.user_id,
            session.thread_id,
            pod.name,
            pod.address,
            pod.create_id,
            self._payload_of.get(session.id),
            dict(session.metadata),
        )

    def finish(self, session_id: str, attempt: int) -> Claim | None:
        """The claim this answer is about, if it is still the session's current one."""
        claim = self._by_session.get(session_id)
        if claim is None or claim.attempt != attempt:
            return None
        del self._by_session[session_id]
        return claim

    def drop(self, session_id: str) -> None:
        self._by_session.pop(session_id, None)

    def hold_payload(self, session_id: str, request_id: int) -> None:
        self._payload_of[session_id] = request_id

    def release_payload(self, session_id: str) -> int | None:
        """The request whose payload is no longer needed, if any."""
        return self._payload_of.pop(session_id, None)


class Claiming:
    def __init__(self, pool: PoolCore) -> None:
        self.pool = pool
        self.claims = Claims()

    def start(self, pod: Pod, session: Session, now: float, *, warm: bool) -> None:
        due = now + self.pool.limits.hook_timeout + CLAIM_MARGIN
        self.pool.outbox.claims.append(self.claims.start(session, pod, warm, due))
        self.pool.deadlines.push(due, DeadlineKind.CLAIM, session.id)

    def answered(self, session_id: str, attempt: int, accepted: bool, now: float) -> None:
        """A claim hook answered (or its deadline passed: ``accepted=False``). Late
        answers, of an attempt already given up or a session already ended, are ignored."""
        claim = self.claims.finish(session_id, attempt)
        if claim is None:
            return
        session = self.pool.sessions[session_id]  # live: ending a session drops its claim
        pod = self.pool.pods.get(claim.pod_name)
        if accepted and pod is not None and pod.state is PodState.ASSIGNED:
            self.pool.hand_over(session, now, Outcome.WARM if claim.warm else Outcome.COLD)
        else:
            self._failed(session, claim, now)

    def pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        """The pod being claimed for this session failed or vanished: the session tries
        another pod, as on a failed claim. False if it was not being claimed for it."""
        claim = self.claims.get(session_id)
        if claim is None or claim.pod_name != pod_name:
            return False
        self.claims.drop(session_id)
        self._failed(self.pool.sessions[session_id], claim, now)
        return True

    def due(self, session_id: str, now: float) -> None:
        claim = self.claims.get(session_id)
        if claim is not None and claim.due <= now:
            self.answered(session_id, claim.attempt, False, now)  # no answer: failed

    def _failed(self, session: Session, claim: Claim, now: float) -> None:
        """That pod goes (it may hold part of the session); the next fresh warm pod is
        tried, and only when none is left does the session wait for a cold one."""
        pool = self.pool
        pool.outbox.claim_failures += 1
        session.pod_name = None
        pool.outbox.dirty_sessions.add(session.id)
        pod = pool.pods.get(claim.pod_name)
        if pod is not None:
            pool.delete_pod(pod, now)
        pod = pool.inventory.oldest_fresh_idle()
        if pod is not None:
            pool.lease(pod, session, now, warm=claim.warm)
            return
        pool.waiting[session.id] = None
        pool.waiting.move_to_end(session.id, last=False)  # it was served first once
        if session.reply_deadline is not None:
            pool.deadlines.push(session.reply_deadline, DeadlineKind.REPLY, session.id)
            if session.reply_deadline <= now:
                pool.reply_due(session.id, now)

    def release_payload(self, session_id: str) -> None:
        request_id = self.claims.release_payload(session_id)
        if request_id is not None:
            self.pool.outbox.payloads_done.append(request_id)
