"""Templates in the pool: a warm pool per template under the one cap, sessions served
from their own template's pool, resources of their own served cold, and a template's
pods rolled on a change to that template only."""

from __future__ import annotations

from sandbox_controller.model import EndReason, Outcome, PodState, Resources, Shape, TemplateLimits
from sandbox_controller.scheduler.shares import refill_order, warm_shares

from .harness import Harness, limits_with

PY = TemplateLimits("py", 2, resources=Resources("1", "2Gi"), max_resources=Resources("4", "8Gi"))
NODE = TemplateLimits("node", 1, resources=Resources("500m", "1Gi"))
HASHES = {"py": "py-1", "node": "node-1"}


def two_templates(max_total_jobs: int = 10, **hashes: str) -> Harness:
    limits = limits_with(templates=(PY, NODE), max_total_jobs=max_total_jobs)
    h = Harness(limits, template_hashes={**HASHES, **hashes})
    h.tick()
    h.fill_pool()
    return h


def idle_of(h: Harness, template: str) -> list[str]:
    return [
        p.name for p in h.pool.pods.values() if p.state is PodState.IDLE and p.template == template
    ]


def test_each_template_keeps_its_own_warm_pool() -> None:
    h = two_templates()
    assert len(idle_of(h, "py")) == 2
    assert len(idle_of(h, "node")) == 1
    status = {t.name: t for t in h.pool.status(h.now).templates}
    assert status["py"].pods[PodState.IDLE] == 2 and status["py"].prewarm.target == 2
    assert status["node"].pods[PodState.IDLE] == 1 and status["node"].prewarm.target == 1


def test_a_session_gets_a_warm_pod_of_its_own_template_and_its_pool_refills() -> None:
    h = two_templates()
    node_pod = idle_of(h, "node")[0]
    rid = h.open("u1", "t1", shape=Shape("node"))
    assert h.outcome(rid) is Outcome.WARM
    session = h.pool.sessions[h.session_of(rid)]
    assert session.pod_name == node_pod and session.template == "node"
    assert len(idle_of(h, "py")) == 2  # the other template's pool is untouched
    h.fill_pool()
    assert len(idle_of(h, "node")) == 1


def test_the_default_template_is_the_first() -> None:
    h = two_templates()
    rid = h.open("u1", "t1")
    assert h.pool.sessions[h.session_of(rid)].template == "py"


def test_resources_of_its_own_are_served_cold_unless_a_pod_of_that_size_is_warm() -> None:
    h = two_templates()
    big = Shape("py", Resources("2", "4Gi"))
    rid = h.open("u1", "t1", wait=0.0, shape=big)
    assert h.outcome(rid) is Outcome.COLD  # the warm py pods are the default size
    assert len(idle_of(h, "py")) == 2
    created = h.complete_creates()
    assert [h.pool.pods[n].shape for n in created] == [big]
    h.ready(*created)
    session = h.pool.sessions[h.session_of(rid)]
    assert session.pod_name == created[0] and session.resources == Resources("2", "4Gi")


def test_the_cap_binds_every_template_and_the_warm_pools_share_it_by_target() -> None:
    # Targets 2 + 1 = 3 warm, but the cap leaves only 2 to warm pods: py gets 1, node 1
    # (in proportion, with the remainder to the largest fraction), never 2 + 0.
    h = two_templates(max_total_jobs=2)
    assert h.pool.total_pods == 2
    assert len(idle_of(h, "py")) == 1
    assert len(idle_of(h, "node")) == 1


def test_at_the_cap_a_template_over_its_share_gives_an_idle_pod_up() -> None:
    h = two_templates(max_total_jobs=3)  # py 2 warm, node 1 warm: the cap is full
    assert h.pool.total_pods == 3
    first = h.open("u1", "t1", shape=Shape("node"))
    assert h.outcome(first) is Outcome.WARM
    # One pod is a session's now: 2 are left to warm pools, py's share 1, node's 1.
    # py holds 2, so it gives its oldest idle pod up, and node's pool refills.
    assert len(h.deleted) == 1 and h.pool.pods[h.deleted[0]].template == "py"
    h.confirm_deletes()
    created = h.complete_creates()
    assert [h.pool.pods[n].template for n in created] == ["node"]
    h.ready(*created)
    assert len(idle_of(h, "py")) == 1 and len(idle_of(h, "node")) == 1
    assert h.pool.total_pods == 3


def test_at_the_cap_a_waiting_session_takes_room_from_the_warm_pools() -> None:
    h = two_templates(max_total_jobs=3)
    waiting = h.open("u1", "t1", wait=30.0, shape=Shape("py", Resources("2")))
    assert h.answer(waiting) is None  # no pod of that size: it waits
    # Real demand first: a warm pod goes (node's would be its whole pool; py is over
    # the share left once the waiter's pod is counted).
    assert len(h.deleted) >= 1
    h.confirm_deletes()
    created = h.complete_creates()
    assert Shape("py", Resources("2")) in [h.pool.pods[n].shape for n in created]
    h.ready(*created)
    assert h.outcome(waiting) is Outcome.COLD
    assert h.pool.total_pods <= 3


def test_a_change_to_one_template_rolls_only_its_pods() -> None:
    h = two_templates()
    py_pods, node_pods = idle_of(h, "py"), idle_of(h, "node")
    limits = h.pool.limits
    rolled = Harness(limits, template_hashes={"py": "py-2", "node": "node-1"})
    for name in py_pods + node_pods:
        rolled.pool.restore_pod(h.pool.pods[name])
    rolled.tick()
    assert sorted(rolled.deleted) == sorted(py_pods)


def test_warm_shares_split_the_budget_in_proportion_to_the_targets() -> None:
    assert warm_shares(10, {"a": 2, "b": 1}) == {"a": 2, "b": 1}
    assert warm_shares(2, {"a": 2, "b": 1}) == {"a": 1, "b": 1}
    assert warm_shares(6, {"a": 6, "b": 3, "c": 3}) == {"a": 3, "b": 2, "c": 1}
    assert warm_shares(0, {"a": 2}) == {"a": 0}
    assert warm_shares(-3, {"a": 2}) == {"a": 0}
    shares = warm_shares(7, {"a": 10, "b": 10, "c": 1})
    assert sum(shares.values()) == 7 and all(shares[n] <= t for n, t in [("c", 1)])


def test_refills_go_to_the_proportionally_emptiest_pool_first() -> None:
    assert refill_order({"a": 0, "b": 0}, {"a": 2, "b": 2}, 3) == ["a", "b", "a"]
    assert refill_order({"a": 1, "b": 0}, {"a": 2, "b": 4}, 2) == ["b", "b"]
    assert refill_order({"a": 2}, {"a": 2}, 5) == []


def test_a_session_of_a_removed_template_blocks_no_other_template() -> None:
    h = two_templates()
    waiting = h.open("u1", "t1", wait=30.0, shape=Shape("gone"))
    assert h.answer(waiting) is None
    assert h.pool.outbox.create_shapes == [] and h.complete_creates() == []
    rid = h.open("u2", "t2", shape=Shape("node"))
    assert h.outcome(rid) is Outcome.WARM
    assert [h.pool.pods[n].template for n in h.complete_creates()] == ["node"]


def test_each_sessions_pod_is_listed_with_the_labels_that_attribute_it() -> None:
    # What sandbox_pod_labels shows: a Docker container cannot be labelled after it is
    # made, so the org and metadata of the session holding it are found there.
    limits = limits_with(templates=(PY, NODE), label_metadata_keys=("team",))
    h = Harness(limits, template_hashes=HASHES)
    h.tick()
    h.fill_pool()
    assert h.pool.pod_labels() == []  # warm pods are no one's
    rid = h.pool.next_request_id()
    metadata = {"team": "data science", "secret": "x"}
    h.pool.open_session(rid, "u1", "t1", 30.0, h.now, metadata, org_id="acme", shape=Shape("node"))
    h.tick()
    pod = h.pool.sessions[h.session_of(rid)].pod_name
    assert h.pool.pod_labels() == [
        (
            pod,
            {
                "agent-sandbox/template": "node",
                "agent-sandbox/org": "acme",
                "agent-sandbox/meta-team": "data_science",
            },
        )
    ]
    h.pool.end_session(h.session_of(rid), EndReason.DELETED, h.now)
    assert h.pool.pod_labels() == []
