import pytest

from sandbox_controller.kubesim.patch import JSON_PATCH, MERGE, STRATEGIC, PatchError, apply_patch

POD = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": [1, 2]}}


@pytest.mark.parametrize("media", [MERGE, STRATEGIC])
def test_merge_labels(media: str) -> None:
    out = apply_patch(media, POD, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert out["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert POD["metadata"]["labels"] == {"a": "1", "b": "2"}  # not modified in place


def test_json_patch() -> None:
    ops = [
        {"op": "add", "path": "/metadata/labels/agent-sandbox~1state", "value": "idle"},
        {"op": "replace", "path": "/spec/x/0", "value": 9},
        {"op": "remove", "path": "/metadata/labels/b"},
        {"op": "test", "path": "/metadata/labels/a", "value": "1"},
    ]
    out = apply_patch(JSON_PATCH, POD, ops)
    assert out["metadata"]["labels"] == {"a": "1", "agent-sandbox/state": "idle"}
    assert out["spec"]["x"] == [9, 2]


def test_json_patch_failed_test() -> None:
    with pytest.raises(PatchError):
        apply_patch(JSON_PATCH, POD, [{"op": "test", "path": "/metadata/labels/a", "value": "x"}])
