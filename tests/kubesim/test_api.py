"""core/v1 REST and watch through the real kubernetes-asyncio client, over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from sandbox_controller.kubesim import KubeSim
from sandbox_controller.kubesim.testing import pod_body

from ..eventually import eventually

NS = "default"


async def raw(core: client.CoreV1Api, fn: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Call through the client without its model layer, to see the wire format."""
    response = await fn(*args, _preload_content=False, **kwargs)
    body = await response.read()
    return response.status, body


async def watch_lines(core: client.CoreV1Api, **kwargs: Any) -> list[dict[str, Any]]:
    """All events of a watch that ends by its own timeoutSeconds."""
    response = await core.list_namespaced_pod(NS, watch=True, _preload_content=False, **kwargs)
    events = []
    async for line in response.content:
        if line.strip():
            events.append(json.loads(line))
    return events


async def test_generate_name_and_conflicts(core: client.CoreV1Api) -> None:
    pod = await core.create_namespaced_pod(NS, pod_body())
    assert pod.metadata.name.startswith("t-") and len(pod.metadata.name) == len("t-") + 5
    await core.create_namespaced_pod(NS, pod_body("fixed"))
    with pytest.raises(ApiException) as exc:
        await core.create_namespaced_pod(NS, pod_body("fixed"))
    assert exc.value.status == 409
    status = json.loads(exc.value.body)
    assert status["kind"] == "Status" and status["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_pod("nope", NS)
    assert missing.value.status == 404
    assert json.loads(missing.value.body)["message"] == 'pods "nope" not found'


async def test_label_and_field_selectors(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod(NS, pod_body("a", {"app": "x", "tier": "web"}))
    await core.create_namespaced_pod(NS, pod_body("b", {"app": "y"}))
    await core.create_namespaced_pod(NS, pod_body("c", {}))

    async def names(**kw: str) -> list[str]:
        pods = await core.list_namespaced_pod(NS, **kw)
        return sorted(p.metadata.name for p in pods.items)

    assert await names(label_selector="app=x") == ["a"]
    assert await names(label_selector="app==y") == ["b"]
    assert await names(label_selector="app!=x") == ["b", "c"]
    assert await names(label_selector="app in (x,y)") == ["a", "b"]
    assert await names(label_selector="app notin (x)") == ["b", "c"]
    assert await names(label_selector="tier") == ["a"]
    assert await names(label_selector="!app") == ["c"]
    assert await names(field_selector="metadata.name=b") == ["b"]


async def test_watch_from_resource_version(core: client.CoreV1Api) -> None:
    first = await core.create_namespaced_pod(NS, pod_body("w1", {"app": "x"}))
    start = first.metadata.resource_version
    await core.create_namespaced_pod(NS, pod_body("w2", {"app": "x"}))
    await core.patch_namespaced_pod("w1", NS, {"metadata": {"labels": {"app": "z"}}})
    await core.delete_namespaced_pod("w2", NS, grace_period_seconds=0)
    events = await watch_lines(
        core, resource_version=start, timeout_seconds=1, label_selector="app=x"
    )
    # MODIFIED events come from the simulated scheduler and kubelet, at their own pace.
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "MODIFIED"]
    # w1 leaving the selector is a DELETED for this watch, as with the real watch cache.
    assert seen == [("ADDED", "w2"), ("DELETED", "w1"), ("DELETED", "w2")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(start)


async def test_bookmarks(core: client.CoreV1Api, sim: KubeSim) -> None:
    pod = await core.create_namespaced_pod(NS, pod_body("bm"))
    events = await watch_lines(
        core,
        resource_version=pod.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    )
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, events
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(
        pod.metadata.resource_version
    )


async def test_watch_too_old_is_410(core: client.CoreV1Api, sim: KubeSim) -> None:
    pod = await core.create_namespaced_pod(NS, pod_body("old"))
    await core.patch_namespaced_pod("old", NS, {"metadata": {"labels": {"x": "1"}}})
    sim.compact()
    events = await watch_lines(core, resource_version=pod.metadata.resource_version)
    assert [e["type"] for e in events] == ["ERROR"]
    status = events[0]["object"]
    assert (status["code"], status["reason"]) == (410, "Expired")
    assert "too old resource version" in status["message"]
    # The current version is still a valid starting point.
    fresh = await core.list_namespaced_pod(NS)
    events = await watch_lines(
        core, resource_version=fresh.metadata.resource_version, timeout_seconds=1
    )
    assert "ERROR" not in [e["type"] for e in events]


async def test_stale_update_is_409(core: client.CoreV1Api) -> None:
    pod = await core.create_namespaced_pod(NS, pod_body("stale"))
    await core.patch_namespaced_pod("stale", NS, {"metadata": {"labels": {"a": "1"}}})
    with pytest.raises(ApiException) as exc:
        await core.replace_namespaced_pod("stale", NS, pod)  # carries the old resourceVersion
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "Conflict"
    current = await core.read_namespaced_pod("stale", NS)
    current.metadata.labels["b"] = "2"
    updated = await core.replace_namespaced_pod("stale", NS, current)
    assert updated.metadata.labels == {"a": "1", "b": "2"}


async def test_patch_kinds(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod(NS, pod_body("p", {"a": "1"}))
    merged = await core.patch_namespaced_pod(
        "p",
        NS,
        {"metadata": {"labels": {"b": "2"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels == {"a": "1", "b": "2"}
    patched = await core.patch_namespaced_pod(
        "p", NS, [{"op": "remove", "path": "/metadata/labels/a"}]
    )
    assert patched.metadata.labels == {"b": "2"}


async def test_graceful_and_immediate_delete(core: client.CoreV1Api, sim: KubeSim) -> None:
    await core.create_namespaced_pod(NS, pod_body("g"))
    await eventually(lambda: sim.store.get("pods", NS, "g")["spec"].get("nodeName") is not None)
    status, body = await raw(core, core.delete_namespaced_pod, "g", NS, grace_period_seconds=30)
    assert status == 200 and json.loads(body)["metadata"]["deletionTimestamp"]
    assert sim.store.find("pods", NS, "g") is not None  # terminating, not gone yet
    await eventually(lambda: sim.store.find("pods", NS, "g") is None)
    await core.create_namespaced_pod(NS, pod_body("h"))
    await core.delete_namespaced_pod("h", NS, grace_period_seconds=0)
    assert sim.store.find("pods", NS, "h") is None
    with pytest.raises(ApiException) as exc:
        await core.delete_namespaced_pod("h", NS)
    assert exc.value.status == 404


async def test_events_and_configmaps(core: client.CoreV1Api, sim: KubeSim) -> None:
    sim.create_configmap("tmpl", {"pod.yaml": "kind: Pod"})
    cm = await core.read_namespaced_config_map("tmpl", NS)
    assert cm.metadata.uid and cm.data == {"pod.yaml": "kind: Pod"}
    await core.create_namespaced_event(
        NS,
        {
            "metadata": {"name": "e1"},
            "involvedObject": {"kind": "Pod", "name": "x", "namespace": NS},
            "type": "Warning",
            "reason": "Test",
            "message": "hello",
        },
    )
    events = await core.list_namespaced_event(NS, field_selector="type=Warning")
    assert [e.message for e in events.items] == ["hello"]


async def test_injected_429_and_admin_endpoint(core: client.CoreV1Api, sim: KubeSim) -> None:
    async with aiohttp.ClientSession(sim.url) as http:
        resp = await http.post(
            "/_kubesim/faults", json={"error_rate": 1.0, "error_codes": [429], "retry_after": 3}
        )
        assert resp.status == 200
        with pytest.raises(ApiException) as exc:
            await core.list_namespaced_pod(NS)
        assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "3"
        await http.post("/_kubesim/faults", json={"error_rate": 0.0})
        await core.create_namespaced_pod(NS, pod_body())
        stats = await (await http.get("/_kubesim/stats")).json()
    assert stats["by_call"]["list pods 429"] == 1
    assert stats["by_call"]["create pods 201"] == 1
    assert stats["max_pods_seen"] == 1


async def test_call_log_names_each_caller(sim: KubeSim, tmp_path: Path) -> None:
    """Two controllers, each with a kubeconfig of its own: the log tells them apart."""
    before = time.time()
    for user in ("replica-a", "replica-b"):
        path = sim.kubeconfig_for(user, f"{user}-token", tmp_path / user)
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(path), client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            await client.CoreV1Api(api).create_namespaced_pod(NS, pod_body(user))
    creates = [(c.user, c.path, c.status) for c in sim.calls if c.verb == "create"]
    assert creates == [
        ("replica-a", f"/api/v1/namespaces/{NS}/pods", 201),
        ("replica-b", f"/api/v1/namespaces/{NS}/pods", 201),
    ]
    assert all(before <= c.at <= time.time() and c.user_agent for c in sim.calls)
    async with aiohttp.ClientSession(sim.url) as http:
        async with http.get("/_kubesim/stats") as response:
            assert (await response.json())["by_user"] == {"replica-a": 1, "replica-b": 1}
        sim.require_auth = True
        headers = {"Authorization": "Bearer stolen"}
        async with http.get(f"/api/v1/namespaces/{NS}/pods", headers=headers) as response:
            assert response.status == 401
        assert sim.calls[-1].user == ""
