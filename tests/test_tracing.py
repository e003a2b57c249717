"""OpenTelemetry traces, collected by a real OTLP/HTTP collector in the test (a server
thread decoding the protobuf export): one trace per claim across the API, the loop,
the store, the backend and the claim hook, whose request carries the traceparent; and
the proxy's route lookup continued by the controller's span."""

from __future__ import annotations

import gzip
import threading
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from proxy.metrics import ProxyMetrics
from proxy.routes import RouteCache
from sandbox_controller import tracing
from sandbox_controller.clock import SystemClock

from .api.test_claims import address_of, sandbox_claim
from .conftest import API_TOKEN, ControllerFactory

CLAIM_PATH_SPANS = {
    "POST /sessions",  # the API
    "scheduler.decide",  # the loop's round
    "store.write",  # the round's commit
    "backend.set_labels",  # the backend
    "sandbox.claim",  # the claim hook
}


class Collector:
    """Spans as an OTLP/HTTP collector receives them: name, ids, parent, service."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            {
                                "name": span.name,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "service": attributes.get("service.name"),
                            }
                        )

    def traces(self) -> dict[str, list[dict[str, Any]]]:
        by_trace: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        with self.lock:
            for span in self.spans:
                by_trace[span["trace"]].append(span)
        return dict(by_trace)


@pytest.fixture
def collector() -> Iterator[tuple[str, Collector]]:
    found = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                found.take(body)
                self.send_response(200)
            else:
                self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", found
    server.shutdown()
    server.server_close()
    tracing.stop()  # whatever a failed test left on


async def test_each_claim_is_one_trace_across_api_loop_store_backend_and_hook(
    start_controller: ControllerFactory, collector: tuple[str, Collector]
) -> None:
    endpoint, spans = collector
    ctl = await start_controller(otlp_endpoint=endpoint, prewarm_pool_size=2)
    assert tracing.enabled()
    await ctl.wait_idle_pods(2)
    opened = [(await ctl.open("ada", f"t{n}")).json() for n in range(2)]
    assert all(s["state"] == "ready" for s in opened)
    received = []
    for session in opened:
        claim = await sandbox_claim(ctl, session["pod"], await address_of(ctl, session["id"]))
        assert claim["session_id"] == session["id"]
        received.append(claim["traceparent"])
    await ctl.stop()  # sends the spans still buffered
    assert not tracing.enabled()

    claims = {
        trace: found
        for trace, found in spans.traces().items()
        if any(s["name"] == "POST /sessions" for s in found)
    }
    assert len(claims) == 2  # one trace per claim
    for found in claims.values():
        assert CLAIM_PATH_SPANS <= {s["name"] for s in found}
        [root] = [s for s in found if s["name"] == "POST /sessions"]
        assert root["parent"] == "" and {s["service"] for s in found} == {"sandbox-controller"}
        assert all(s["parent"] == root["id"] for s in found if s is not root)
    # Each sandbox's claim hook got the W3C traceparent of its own claim span.
    claim_spans = {
        (s["trace"], s["id"])
        for found in claims.values()
        for s in found
        if s["name"] == "sandbox.claim"
    }
    for traceparent in received:
        version, trace_id, span_id, flags = traceparent.split("-")
        assert version == "00" and int(flags, 16) & 1  # sampled
        assert (trace_id, span_id) in claim_spans


async def test_the_proxys_route_lookup_is_continued_by_the_controller(
    start_controller: ControllerFactory, collector: tuple[str, Collector]
) -> None:
    endpoint, spans = collector
    ctl = await start_controller(otlp_endpoint=endpoint)
    await ctl.wait_idle_pods(1)
    session = (await ctl.open("bo", "t1")).json()
    async with httpx.AsyncClient() as client:
        routes = RouteCache(client, ctl.url, API_TOKEN, SystemClock(), ProxyMetrics())
        assert await routes.address(session["id"]) == await address_of(ctl, session["id"])
    await ctl.stop()

    [lookup] = [s for s in spans.spans if s["name"] == "proxy.route_lookup"]
    served = [s for s in spans.spans if s["name"] == "GET /internal/routes"]
    assert [s for s in served if s["trace"] == lookup["trace"]] == [
        {**served[0], "trace": lookup["trace"], "parent": lookup["id"]}
    ]


async def test_tracing_is_off_without_an_endpoint(
    start_controller: ControllerFactory, collector: tuple[str, Collector]
) -> None:
    _, spans = collector
    ctl = await start_controller()
    assert not tracing.enabled()
    await ctl.wait_idle_pods(1)
    session = (await ctl.open("cy", "t1")).json()
    claim = await sandbox_claim(ctl, session["pod"], await address_of(ctl, session["id"]))
    assert claim["traceparent"] is None
    await ctl.stop()
    assert spans.spans == []
