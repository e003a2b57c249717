"""Claim-time configuration (issue 12 item 2): a leased pod's claim hook must accept
before the session is ready; a failed or unanswered claim costs that pod and the next
warm one is tried. Decided on a hand-set clock with no I/O."""

from __future__ import annotations

from sandbox_controller.model import EndReason, Outcome, PodState, SessionState, WaitReason
from sandbox_controller.scheduler.claiming import CLAIM_MARGIN

from .harness import Harness, limits_with

HOOK_TIMEOUT = 2.0


def claiming(prewarm: int = 2, **overrides: float) -> Harness:
    h = Harness(
        limits_with(prewarm_pool_size=prewarm, hooks=True, hook_timeout=HOOK_TIMEOUT, **overrides)
    )
    h.tick()
    h.fill_pool(claimable=True)
    return h


def test_a_warm_claim_is_ready_only_once_the_hook_accepts() -> None:
    h = claiming()
    rid = h.pool.next_request_id()
    h.pool.open_session(rid, "alice", "t1", 30.0, h.now, {"workspace": "w1"})
    h.tick()
    assert h.answer(rid) is None  # not before the sandbox has the session
    [call] = h.claims
    session = h.pool.sessions[call.session_id]
    assert session.state is SessionState.PROVISIONING
    assert h.pool.pods[call.pod_name].state is PodState.ASSIGNED  # never anyone else's
    assert (call.user_id, call.thread_id, call.request_id) == ("alice", "t1", rid)
    assert call.create_id == f"cid-{call.pod_name}" and call.metadata == {"workspace": "w1"}
    h.advance(0.5)
    h.answer_claim(call)
    assert h.outcome(rid) is Outcome.WARM
    assert session.state is SessionState.READY
    assert session.last_active_at == h.now  # the idle clock starts at hand-over
    assert h.payloads_done == [rid]  # the loop may forget the env and files now


def test_a_failed_claim_deletes_that_pod_and_the_next_warm_pod_serves() -> None:
    h = claiming(prewarm=2)
    rid = h.open("alice", "t1")
    first = h.claims[-1]
    h.answer_claim(first, accepted=False)
    assert first.pod_name in h.deleted
    assert h.claim_failures == 1
    second = h.claims[-1]
    assert second.pod_name != first.pod_name and second.attempt != first.attempt
    assert h.answer(rid) is None
    h.answer_claim(second)
    assert h.outcome(rid) is Outcome.WARM  # still warm: no cold start
    assert h.pool.sessions[h.session_of(rid)].pod_name == second.pod_name


def test_with_no_warm_pod_left_the_session_waits_for_a_cold_one() -> None:
    h = claiming(prewarm=1)
    rid = h.open("alice", "t1", wait=60.0)
    h.answer_claim(h.claims[-1], accepted=False)
    sid = h.claims[-1].session_id
    assert sid in h.pool.waiting and h.answer(rid) is None
    h.fill_pool(claimable=True)  # a fresh pod starts and is leased to it
    cold = h.claims[-1]
    assert cold.session_id == sid and cold.request_id == rid  # same env and files again
    h.answer_claim(cold)
    assert h.outcome(rid) is Outcome.COLD
    assert h.state(sid) is SessionState.READY


def test_an_unanswered_claim_fails_at_the_pools_own_deadline() -> None:
    h = claiming(prewarm=2)
    rid = h.open("alice", "t1")
    first = h.claims[-1]
    h.advance(HOOK_TIMEOUT + CLAIM_MARGIN - 0.1)
    assert len(h.claims) == 1  # still waiting for the hook
    h.advance(0.1)
    assert first.pod_name in h.deleted and len(h.claims) == 2
    h.answer_claim(first)  # the lost answer turns up late: ignored
    assert h.answer(rid) is None
    h.answer_claim(h.claims[-1])
    assert h.outcome(rid) is Outcome.WARM


def test_a_delete_while_claiming_ends_the_session_and_deletes_the_pod() -> None:
    h = claiming()
    rid = h.open("alice", "t1")
    call = h.claims[-1]
    h.pool.end_session(call.session_id, EndReason.DELETED, h.now)
    h.tick()
    assert call.pod_name in h.deleted
    assert h.payloads_done == [rid]
    h.answer_claim(call)  # late: the session has ended
    session = h.pool.sessions[call.session_id]
    assert session.state is SessionState.ENDED and session.end_reason is EndReason.DELETED
    assert len(h.claims) == 1


def test_the_reply_deadline_does_not_cut_a_claim_short() -> None:
    h = claiming()
    rid = h.open("alice", "t1", wait=0.0)
    assert h.answer(rid) is None  # the claim is the warm path: it answers
    h.answer_claim(h.claims[-1])
    assert h.outcome(rid) is Outcome.WARM


def test_a_failed_claim_past_the_wait_answers_provisioning() -> None:
    h = claiming(prewarm=1)
    rid = h.open("alice", "t1", wait=1.0)
    h.advance(2.0)
    h.answer_claim(h.claims[-1], accepted=False)
    answer = h.answer(rid)
    assert answer is not None and answer.outcome is Outcome.COLD
    assert h.state(h.session_of(rid)) is SessionState.PROVISIONING


def test_a_pod_that_fails_while_claimed_is_replaced_by_the_next_warm_one() -> None:
    h = claiming(prewarm=2)
    rid = h.open("alice", "t1")
    first = h.claims[-1]
    h.fail(first.pod_name)
    second = h.claims[-1]
    assert second.pod_name != first.pod_name
    h.answer_claim(first)  # its answer, if any, is late
    h.answer_claim(second)
    assert h.outcome(rid) is Outcome.WARM


def test_a_retry_for_the_thread_sends_nothing_again() -> None:
    h = claiming()
    rid = h.open("alice", "t1")
    retry = h.open("alice", "t1")
    h.answer_claim(h.claims[-1])
    assert h.outcome(rid) is Outcome.WARM and h.outcome(retry) is Outcome.EXISTING
    assert len(h.claims) == 1 and h.claims[0].request_id == rid


def test_a_pod_without_a_create_id_is_handed_over_at_once() -> None:
    h = Harness(limits_with(prewarm_pool_size=1, hooks=True))
    h.tick()
    h.fill_pool(claimable=False)  # made by an older version: it has no claim secret
    rid = h.open("alice", "t1")
    assert h.outcome(rid) is Outcome.WARM and not h.claims


def test_with_hooks_off_no_claim_is_made() -> None:
    h = Harness(limits_with(prewarm_pool_size=1, hooks=False))
    h.tick()
    h.fill_pool(claimable=True)
    rid = h.open("alice", "t1")
    assert h.outcome(rid) is Outcome.WARM and not h.claims and not h.payloads_done


def test_a_claiming_session_says_so() -> None:
    h = claiming()
    h.open("alice", "t1", wait=0.0)
    call = h.claims[-1]
    detail = h.pool.provisioning(call.session_id)
    assert detail is not None and detail.reason is WaitReason.CLAIMING
