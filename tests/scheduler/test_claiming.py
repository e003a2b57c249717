"""Claim-time configuration (issue 12 item 2): a leased pod's claim hook must accept
before the session is ready; a failed or unanswered claim costs that pod and the next
warm one is tried. Decided on a hand-set clock with no I/O."""

from __future__ import annotations

import pytest

from sandbox_controller.hooks import HookOutcome, HookResult
from sandbox_controller.model import EndReason, Outcome, PodState, SessionState, WaitReason
from sandbox_controller.scheduler.claiming import CLAIM_MARGIN, ClaimFailure
from sandbox_controller.scheduler.effect_calls import claim_failure
from sandbox_controller.scheduler.effects import ClaimCall

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


def test_a_slow_claim_answers_provisioning_at_the_reply_deadline_and_goes_on() -> None:
    h = claiming()
    rid = h.open("alice", "t1", wait=1.0)
    call = h.claims[-1]
    h.advance(0.999)
    assert h.answer(rid) is None  # the hook still has time
    h.advance(0.001)
    answer = h.answer(rid)
    assert answer is not None and answer.outcome is Outcome.COLD  # not ready in time
    sid = h.session_of(rid)
    assert h.state(sid) is SessionState.PROVISIONING
    detail = h.pool.provisioning(sid)
    assert detail is not None and detail.reason is WaitReason.CLAIMING
    h.answer_claim(call)  # the claim goes on, and the session turns ready
    assert h.state(sid) is SessionState.READY and len(h.answers) == 1


def test_a_wait_of_zero_answers_at_once_while_the_claim_goes_on() -> None:
    h = claiming()
    rid = h.open("alice", "t1", wait=0.0)
    answer = h.answer(rid)
    assert answer is not None and answer.outcome is Outcome.COLD
    h.answer_claim(h.claims[-1])
    assert h.state(h.session_of(rid)) is SessionState.READY


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


# -- a bad payload fails its session, not the pool (issue 17 item 3)

REFUSED = ClaimFailure(True, 'HTTP 422: {"error": "files: cannot write"}')
TIMED_OUT = ClaimFailure(False, "timed out")


def fail_claim(h: Harness, call: ClaimCall, failure: ClaimFailure) -> None:
    h.pool.claim_answered(call.session_id, call.attempt, False, h.now, failure)
    h.tick()


def test_a_claim_refused_by_two_pods_ends_its_session_and_a_third_is_never_tried() -> None:
    h = claiming(prewarm=4)
    rid = h.open("mallory", "t1")
    first = h.claims[-1]
    fail_claim(h, first, REFUSED)
    second = h.claims[-1]
    assert second.pod_name != first.pod_name and h.answer(rid) is None
    fail_claim(h, second, REFUSED)
    assert len(h.claims) == 2  # no third pod
    session = h.pool.sessions[first.session_id]
    assert session.state is SessionState.ENDED
    assert session.end_reason is EndReason.CLAIM_REJECTED
    assert session.end_detail is not None
    assert session.end_detail.claim_answer == (
        'refused by 2 sandboxes; the last answered HTTP 422: {"error": "files: cannot write"}'
    )
    assert {first.pod_name, second.pod_name} <= set(h.deleted)
    assert not h.releases  # a refused pod is deleted without a release call
    answer = h.answer(rid)  # the caller hears the ending, not a silent drop
    assert answer is not None and answer.session_id == first.session_id
    assert h.payloads_done == [rid]
    assert EndReason.CLAIM_REJECTED.value == "claim_rejected"


def test_the_pool_refills_and_the_next_user_is_served_warm() -> None:
    h = claiming(prewarm=3)
    h.open("mallory", "t1")
    fail_claim(h, h.claims[-1], REFUSED)
    fail_claim(h, h.claims[-1], REFUSED)
    h.confirm_deletes()
    h.fill_pool(claimable=True)
    assert len(h.pool.idle) == 3
    rid = h.open("bob", "t2")
    h.answer_claim(h.claims[-1])
    assert h.outcome(rid) is Outcome.WARM


def test_one_refusal_then_an_accepting_pod_serves() -> None:
    h = claiming(prewarm=3)
    rid = h.open("alice", "t1")
    fail_claim(h, h.claims[-1], REFUSED)
    h.answer_claim(h.claims[-1])
    assert h.outcome(rid) is Outcome.WARM
    assert h.state(h.session_of(rid)) is SessionState.READY


def test_any_failures_cost_at_most_max_claim_attempts_pods() -> None:
    h = claiming(prewarm=6, max_claim_attempts=4)
    rid = h.open("alice", "t1", wait=60.0)
    for _ in range(3):
        fail_claim(h, h.claims[-1], TIMED_OUT)
    h.advance(HOOK_TIMEOUT + CLAIM_MARGIN)  # the fourth is never answered at all
    assert len(h.claims) == 4
    session = h.pool.sessions[h.claims[0].session_id]
    assert session.end_reason is EndReason.CLAIM_REJECTED
    assert session.end_detail is not None
    assert session.end_detail.claim_answer == "failed on 4 sandboxes; the last: no answer in time"
    assert h.answer(rid) is not None and h.claim_failures == 4


def test_a_pod_that_dies_during_its_claim_counts_as_an_attempt() -> None:
    h = claiming(prewarm=4)
    h.open("alice", "t1")
    for _ in range(3):
        h.fail(h.claims[-1].pod_name)
    assert len(h.claims) == 3
    session = h.pool.sessions[h.claims[0].session_id]
    assert session.end_reason is EndReason.CLAIM_REJECTED
    assert session.end_detail is not None and session.end_detail.claim_answer is not None
    assert session.end_detail.claim_answer.endswith("the pod failed during the claim")


def test_attempts_count_across_cold_pods_too() -> None:
    h = claiming(prewarm=1)
    rid = h.open("alice", "t1", wait=60.0)
    fail_claim(h, h.claims[-1], TIMED_OUT)  # the only warm pod
    h.fill_pool(claimable=True)
    fail_claim(h, h.claims[-1], TIMED_OUT)  # a cold one
    answer = h.answer(rid)
    assert answer is None
    h.fill_pool(claimable=True)
    fail_claim(h, h.claims[-1], REFUSED)  # the third: given up
    sid = h.claims[0].session_id
    assert h.pool.sessions[sid].end_reason is EndReason.CLAIM_REJECTED
    assert sid not in h.pool.waiting and h.answer(rid) is not None


def test_a_session_answered_provisioning_still_ends_when_its_claim_is_given_up() -> None:
    h = claiming(prewarm=3)
    rid = h.open("mallory", "t1", wait=1.0)
    h.advance(1.0)
    assert h.outcome(rid) is Outcome.COLD  # provisioning, claiming
    fail_claim(h, h.claims[-1], REFUSED)
    fail_claim(h, h.claims[-1], REFUSED)
    sid = h.session_of(rid)
    assert h.pool.sessions[sid].end_reason is EndReason.CLAIM_REJECTED
    assert len(h.answers) == 1  # answered once, at the deadline; the end is for GET


def test_tries_are_counted_per_session() -> None:
    """Another session's refusals never count toward this one's."""
    h = claiming(prewarm=4)
    h.open("mallory", "t1")
    fail_claim(h, h.claims[-1], REFUSED)
    rid = h.open("bob", "t2")
    fail_claim(h, h.claims[-1], REFUSED)  # bob's first refusal
    assert h.answer(rid) is None and h.claims[-1].session_id == h.claims[-2].session_id


@pytest.mark.parametrize(
    ("status", "refused"),
    [(400, True), (401, True), (409, True), (422, True), (408, False), (429, False),
     (500, False), (503, False), (None, False)],
)  # fmt: skip
def test_only_a_4xx_that_judges_the_payload_is_a_refusal(status: int | None, refused: bool) -> None:
    words = "timed out" if status is None else f"HTTP {status}"
    result = HookResult(HookOutcome.FAILED, words, status=status, answer="no" if status else "")
    failure = claim_failure(result)
    assert failure.refused is refused
    assert failure.words == (f"HTTP {status}: no" if status else "timed out")
