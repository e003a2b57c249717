"""What can go wrong on purpose, and the record of what was asked."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .store import ApiError


@dataclass
class Faults:
    # Fraction of API calls (0..1) answered with one of error_codes instead of served.
    error_rate: float = 0.0
    error_codes: tuple[int, ...] = (500, 429)
    # Seconds in the Retry-After header of a 429.
    retry_after: int = 1
    # Seconds added before every API call is served.
    latency: float = 0.0
    # Cut every open watch stream this often (seconds; 0 = never).
    cut_watches_every: float = 0.0
    # Only calls whose verb is in this set are failed (empty = every verb but discovery).
    verbs: frozenset[str] = field(default_factory=frozenset)
    # Fraction of creates carried out but answered 504, as a real API server answers a
    # write that outlived the request's deadline: the client cannot tell it happened.
    timeout_after_write_rate: float = 0.0
    # Refuse every pod create with this status, as a real API server does for good:
    # 403 (RBAC forbids it), 422 (admission finds the pod invalid). 0 = off.
    refuse_pod_creates: int = 0

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}")
            if key == "error_codes":
                value = tuple(int(v) for v in value)
            elif key == "verbs":
                value = frozenset(value)
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_codes"] = list(self.error_codes)
        data["verbs"] = sorted(self.verbs)
        return data

    def timeout_after_write(self, verb: str, rng: random.Random) -> ApiError | None:
        if verb != "create" or self.timeout_after_write_rate <= 0:
            return None
        if rng.random() >= self.timeout_after_write_rate:
            return None
        return ApiError(
            504,
            "Timeout",
            "Timeout: request did not complete within requested timeout"
            " - context deadline exceeded",
        )

    def refusal(self, verb: str, resource: str, namespace: str) -> ApiError | None:
        """The refusal of a pod create, in the words a real API server uses."""
        code = self.refuse_pod_creates
        if not code or verb != "create" or resource != "pods":
            return None
        if code == 403:
            return ApiError(
                403,
                "Forbidden",
                'pods is forbidden: User "system:serviceaccount:'
                f'{namespace}:agent-sandbox-controller" cannot create resource "pods" in '
                f'API group "" in the namespace "{namespace}"',
            )
        if code == 422:
            return ApiError(
                422,
                "Invalid",
                'Pod "agent-sandbox-job-" is invalid: spec.containers[0].image: Required value',
            )
        return ApiError(code, "BadRequest", f"kubesim: injected refusal ({code})")

    def pick_error(self, verb: str, rng: random.Random) -> ApiError | None:
        if verb == "discovery" or self.error_rate <= 0 or not self.error_codes:
            return None
        if self.verbs and verb not in self.verbs:
            return None
        if rng.random() >= self.error_rate:
            return None
        code = rng.choice(self.error_codes)
        if code == 429:
            return ApiError(
                429,
                "TooManyRequests",
                "kubesim: injected fault: too many requests, please try again later",
                details={"retryAfterSeconds": self.retry_after},
                headers={"Retry-After": str(self.retry_after)},
            )
        if code == 503:
            return ApiError(503, "ServiceUnavailable", "kubesim: injected fault: unavailable")
        return ApiError(code, "InternalError", "kubesim: injected fault: internal error")


@dataclass
class CallRecord:
    method: str
    path: str
    verb: str  # list, watch, get, create, update, patch, delete, discovery, admin, other
    resource: str
    status: int = 0  # 0 while a watch is still streaming its headers
    at: float = 0.0  # wall-clock time the call arrived (time.time())
    # Who called: the name of the bearer token's user ("" for none or an unknown token),
    # so a test with several controllers can tell which one wrote what, and when.
    user: str = ""
    user_agent: str = ""
