"""Labels are decoded by the backends, once, into typed fields of PodStatus: the
scheduler and recovery read those and parse no label string."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from sandbox_controller import scheduler
from sandbox_controller.backends.base import (
    LABEL_CREATE_ID,
    LABEL_SESSION,
    LABEL_STATE,
    LABEL_TEMPLATE_HASH,
    LabelState,
    PodPhase,
    PodStatus,
    assigned_labels,
    pool_labels,
    session_label,
)


def test_a_pool_pod_decodes_as_fresh() -> None:
    labels = {**pool_labels(), LABEL_TEMPLATE_HASH: "abc", LABEL_CREATE_ID: "c1"}
    status = PodStatus("p", PodPhase.READY, labels)
    assert status.label_state is LabelState.POOL
    assert (status.session_hash, status.template_hash, status.create_id) == (None, "abc", "c1")


def test_an_assigned_pod_carries_its_sessions_hash() -> None:
    status = PodStatus("p", PodPhase.READY, assigned_labels("session-1"))
    assert status.label_state is LabelState.ASSIGNED
    assert status.session_hash == session_label("session-1")
    assert len(status.labels[LABEL_SESSION]) <= 63  # a label value's limit


def test_foreign_or_empty_labels_decode_as_absent() -> None:
    status = PodStatus(
        "p",
        PodPhase.PENDING,
        {LABEL_STATE: "someone-elses", LABEL_SESSION: "", LABEL_CREATE_ID: ""},
    )
    assert status.label_state is None
    assert status.session_hash is None and status.create_id is None
    assert PodStatus("bare", PodPhase.PENDING).template_hash is None


def test_a_changed_status_is_decoded_afresh() -> None:
    status = PodStatus("p", PodPhase.PENDING, pool_labels())
    assigned = dataclasses.replace(status, labels=assigned_labels("s"), phase=PodPhase.READY)
    assert assigned.label_state is LabelState.ASSIGNED and assigned.session_hash is not None


def test_the_scheduler_parses_no_label_string() -> None:
    offenders = []
    for path in Path(scheduler.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names if a.name.startswith("LABEL_")]
                offenders += [f"{path.name} imports {n}" for n in names]
            elif isinstance(node, ast.Attribute) and node.attr == "labels":
                owner = node.value
                # outbox.labels is the scheduler's own list of labels to set, not a pod's.
                if not (
                    isinstance(owner, ast.Attribute | ast.Name) and "outbox" in ast.unparse(owner)
                ):
                    offenders.append(f"{path.name}:{node.lineno} reads {ast.unparse(node)}")
    assert offenders == []
