"""Claims: pods leased to a session whose claim hook has not answered yet.

With the sandbox hooks on, a pod handed to a session is first *claimed*: the loop
delivers the session (and the caller's env and files, which it alone holds) to the
pod's ``POST /_sandbox/claim``, and only an accepting answer makes the session ready.
Meanwhile the pod is assigned (it never serves anyone else) and the session stays
provisioning. Each claim call is one *attempt*, numbered, so an answer that comes
back after its attempt was given up (a fallback deadline, a DELETE, a failed pod) is
recognised as late and ignored. ``Claims`` keeps the attempts; ``Claiming`` decides
(pure, ``now`` passed in), over the pool's shared state (core.py).

A payload no sandbox will take must cost its session, not the pool: each session's
claim may cost at most ``max_claim_attempts`` pods, whatever the failures (timeouts,
5xx, pods that die), and a claim *refused* (a 4xx answer: the sandbox read the payload
and said no) by two pods is not tried on a third. Either way the session ends
``claim_rejected``, quoting what the sandbox said.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..model import EndReason, Pod, PodState, Session
from .core import PoolCore
from .deadlines import DeadlineKind
from .effects import ClaimCall

# The pool's own deadline for a claim answer: the loop's call is bounded by the hook
# timeout; this margin covers the loop's round trip, so a lost answer (a cancelled
# effect, a bug) can never leave a session provisioning for good.
CLAIM_MARGIN = 1.0
# Refusals by this many different pods end the session: one may be a broken pod, two
# agreeing mean the payload.
REFUSALS_TO_REJECT = 2


@dataclass(frozen=True)
class ClaimFailure:
    """Why one claim attempt failed: ``refused`` if the sandbox read the payload and
    said no (a 4xx that is not "no claim hook" nor "not now"); ``words`` say what
    happened (effect_calls.py ``claim_failure`` builds it from the hook's answer)."""

    refused: bool
    words: str


NO_ANSWER = ClaimFailure(False, "no answer in time")
POD_LOST = ClaimFailure(False, "the pod failed during the claim")


@dataclass
class Tries:
    """One session's claim attempts so far, and their failures."""

    pods: int = 0
    refusals: int = 0
    last: ClaimFailure | None = None


def rejection(tries: Tries, max_attempts: int) -> str | None:
    """Why this session's claim is tried no further (its end detail), or None to go on."""
    last = tries.last.words if tries.last else "failed"
    if tries.refusals >= REFUSALS_TO_REJECT:
        return f"refused by {tries.refusals} sandboxes; the last answered {last}"
    if tries.pods >= max_attempts:
        return f"failed on {tries.pods} sandboxes; the last: {last}"
    return None


@dataclass(frozen=True)
class Claim:
    attempt: int
    pod_name: str
    warm: bool  # answered "warm" once accepted: the pod came from the warm pool
    due: float  # given up as failed if not answered by then (CLAIM_MARGIN)


class Claims:
    def __init__(self, max_attempts: int = 3) -> None:
        self.max_attempts = max_attempts
        self._by_session: dict[str, Claim] = {}
        # Until the session is handed over or ends (release_payload).
        self._tries: dict[str, Tries] = {}
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
        self._tries.setdefault(session.id, Tries()).pods += 1
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
            bool(session.secrets),
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

    def failed(self, session_id: str, failure: ClaimFailure) -> str | None:
        """Count a failed attempt: why the session's claim is given up, or None."""
        tries = self._tries.setdefault(session_id, Tries())
        tries.refusals += failure.refused
        tries.last = failure
        return rejection(tries, self.max_attempts)

    def hold_payload(self, session_id: str, request_id: int) -> None:
        self._payload_of[session_id] = request_id

    def release_payload(self, session_id: str) -> int | None:
        """The session is done with claims (handed over, or ended): forget its tries;
        the request whose payload is no longer needed, if any."""
        self._tries.pop(session_id, None)
        return self._payload_of.pop(session_id, None)


class Claiming:
    def __init__(self, pool: PoolCore) -> None:
        self.pool = pool
        self.claims = Claims(pool.limits.max_claim_attempts)

    def start(self, pod: Pod, session: Session, now: float, *, warm: bool) -> None:
        due = now + self.pool.limits.hook_timeout + CLAIM_MARGIN
        self.pool.outbox.claims.append(self.claims.start(session, pod, warm, due))
        self.pool.deadlines.push(due, DeadlineKind.CLAIM, session.id)

    def answered(
        self,
        session_id: str,
        attempt: int,
        accepted: bool,
        now: float,
        failure: ClaimFailure = NO_ANSWER,
    ) -> None:
        """A claim hook answered (or its deadline passed: ``accepted=False``), and if it
        failed, how. Late answers, of an attempt already given up or a session already
        ended, are ignored."""
        claim = self.claims.finish(session_id, attempt)
        if claim is None:
            return
        session = self.pool.sessions[session_id]  # live: ending a session drops its claim
        pod = self.pool.pods.get(claim.pod_name)
        if accepted and pod is not None and pod.state is PodState.ASSIGNED:
            self.pool.claimed(session, pod, now, warm=claim.warm)
        else:
            self._failed(session, claim, now, failure)

    def pod_lost(self, session_id: str, pod_name: str, now: float) -> bool:
        """The pod being claimed for this session failed or vanished: the session tries
        another pod, as on a failed claim. False if it was not being claimed for it."""
        claim = self.claims.get(session_id)
        if claim is None or claim.pod_name != pod_name:
            return False
        self.claims.drop(session_id)
        self._failed(self.pool.sessions[session_id], claim, now, POD_LOST)
        return True

    def due(self, session_id: str, now: float) -> None:
        claim = self.claims.get(session_id)
        if claim is not None and claim.due <= now:
            self.answered(session_id, claim.attempt, False, now)  # no answer: failed

    def _failed(self, session: Session, claim: Claim, now: float, failure: ClaimFailure) -> None:
        """That pod goes (it may hold part of the session); the next fresh warm pod is
        tried, and only when none is left does the session wait for a cold one. A
        claim given up (``rejection``) ends the session instead."""
        pool = self.pool
        pool.outbox.claim_failures += 1
        session.pod_name = None
        pool.outbox.dirty_sessions.add(session.id)
        pod = pool.pods.get(claim.pod_name)
        if pod is not None:
            pool.delete_pod(pod, now)
        rejected = self.claims.failed(session.id, failure)
        if rejected is not None and session.resuming:
            pool.resume_failed(session, now, f"claim_rejected: {rejected}")  # archive kept
            return
        if rejected is not None:
            pool.end_session(session.id, EndReason.CLAIM_REJECTED, now, claim_answer=rejected)
            return
        pod = pool.inventory.oldest_fresh_idle(session.shape)
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
