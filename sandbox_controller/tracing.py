"""OpenTelemetry traces (README "Tracing"): off unless an OTLP endpoint is set.

``SANDBOX_OTLP_ENDPOINT`` (or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``) names an
OTLP/HTTP collector; spans go to ``<endpoint>/v1/traces`` in batches, from a thread of
the SDK's own. Off, ``span`` hands back one shared no-op context manager and
``context_now`` None, so the claim path pays an attribute read and a branch.

The process-wide state is one tracer, set by ``start`` and cleared by ``stop``: one
controller or proxy per process (tests start and stop them in turn).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind

from .config import Settings

OTEL_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_PATH = "/v1/traces"

_NOOP: AbstractContextManager[object] = contextlib.nullcontext()


class _State:
    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None


_state = _State()


def endpoint_of(settings: Settings) -> str | None:
    return settings.otlp_endpoint or os.environ.get(OTEL_ENDPOINT_ENV) or None


def start(settings: Settings, service: str) -> bool:
    """Turn tracing on for this process if an endpoint is set; whether it is on."""
    endpoint = endpoint_of(settings)
    if endpoint is None or _state.tracer is not None:
        return _state.tracer is not None
    # Imported here: a process without an endpoint never loads the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + TRACES_PATH)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    _state.provider, _state.tracer = provider, provider.get_tracer("sandbox_controller")
    return True


def stop() -> None:
    """Send the spans still buffered, then turn tracing off."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _state.tracer is not None


def span(
    name: str,
    parent: Context | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    links: Sequence[Context] = (),
    **attributes: str | int,
) -> AbstractContextManager[object]:
    """A span around a block, the current span's child (or ``parent``'s); a shared
    no-op when tracing is off."""
    tracer = _state.tracer
    if tracer is None:
        return _NOOP
    linked = [Link(trace.get_current_span(c).get_span_context()) for c in links]
    return tracer.start_as_current_span(
        name, context=parent, kind=kind, links=linked, attributes=attributes
    )


def context_now() -> Context | None:
    """The current trace context, to carry to another task (None when off)."""
    if _state.tracer is None:
        return None
    from opentelemetry.context import get_current

    return get_current()


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the W3C ``traceparent`` of the current span to outgoing headers."""
    if _state.tracer is not None:
        propagate.inject(headers)


def extracted(headers: Mapping[str, str]) -> Context | None:
    """The trace context an incoming request carries (None when off or absent)."""
    if _state.tracer is None or "traceparent" not in headers:
        return None
    return propagate.extract(headers)


@contextlib.contextmanager
def server_span(name: str, headers: Mapping[str, str], **attributes: str | int) -> Iterator[None]:
    """A SERVER span for an incoming request, continuing the caller's trace if it sent
    one; nothing when off."""
    tracer = _state.tracer
    if tracer is None:
        yield
        return
    parent = extracted(headers)
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    ):
        yield
