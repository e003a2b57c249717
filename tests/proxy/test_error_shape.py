"""The proxy's refusals have the controller's shape: {"error": {"code", "message"}}."""

from __future__ import annotations

import inspect
import json

from proxy import errors
from sandbox_controller.api.errors import Problem, error_response
from sandbox_controller.wire_errors import ErrorCode


def proxy_errors() -> list[errors.ProxyError]:
    made = []
    for _, factory in inspect.getmembers(errors, inspect.isfunction):
        wanted = inspect.signature(factory).parameters
        args = {name: 1 if name in ("limit", "seconds") else "x" for name in wanted}
        made.append(factory(**args))
    return made


def test_every_proxy_error_body_is_shaped_and_spelt_as_the_controllers() -> None:
    controller = error_response(Problem.of(ErrorCode.NOT_FOUND, "no such thing")).body
    assert json.loads(controller) == {"error": {"code": "not_found", "message": "no such thing"}}
    found = proxy_errors()
    assert len(found) >= 10
    for error in found:
        body = error.body()
        assert json.loads(body) == {"error": {"code": error.code, "message": error.message}}
        assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()
