"""Who is asking and may they go there: a request's credentials checked with the
controller (cached), its destination decided against the pod's grant and the addresses
its name resolves to, and the dial to those very addresses. Shared by the accept path
(front.py) and the stream code (connection.py)."""

from __future__ import annotations

import asyncio

from sandbox_controller.egress_policy import (
    RESOLVE_FAILED,
    UNAUTHENTICATED,
    Decision,
    decide_addresses,
    decide_name,
    parse_ip,
)

from .common import (
    CONNECT_TIMEOUT,
    DECISIONS_MAX,
    Hub,
    Record,
    Refusal,
    Verdicts,
    basic_credentials,
)
from .controller import ControllerUnavailable, Grant, Refused
from .exchange import Streams
from .heads import Head
from .resolve import ResolveFailed


class Admission:
    def __init__(self, server: Hub) -> None:
        self.server = server
        # The last decision made on this connection, reused while the controller's answer
        # it was made under is the cached one (so for at most that answer's ttl).
        self._last: tuple[Grant, tuple[str, int], Decision] | None = None

    async def authorize(self, request: Head, record: Record) -> Grant:
        credentials = basic_credentials(request.get("proxy-authorization"))
        if credentials is None:
            self.server.denied(record, None, UNAUTHENTICATED)
            raise Refusal(407, UNAUTHENTICATED, "Proxy-Authorization (Basic) required")
        record.pod = credentials[0]
        try:
            return await self.server.controller.authorize(*credentials)
        except Refused as exc:
            self.server.denied(record, None, exc.reason)
            raise Refusal(exc.status, exc.reason, "credential refused") from exc
        except ControllerUnavailable as exc:
            record.reason = "controller_unavailable"
            raise Refusal(503, "controller_unavailable", "cannot check credentials") from exc

    async def admit(self, grant: Grant, record: Record) -> Decision:
        record.session = grant.session_id
        key = (record.host, record.port)
        last = self._last
        if last is not None and last[0] is grant and last[1] == key:
            decision = last[2]
            record.decision, record.reason = decision.decision, decision.reason
            self.server.admitted(record, grant.session_id, decision)
            return decision
        # The verdicts are pure functions of (grant, host, port) and of the addresses
        # found, so they are kept while the grant is the controller's cached answer and
        # the resolver returns the very list it checked before (its cached answer); the
        # name is still resolved for every decision, and a new answer is checked anew.
        memo = self.server.decisions
        memo_key = (id(grant), record.host, record.port)
        entry = memo.get(memo_key)
        if entry is None or entry.grant is not grant:
            entry = Verdicts(grant, decide_name(grant.mode, grant.allow, *key))
            if len(memo) >= DECISIONS_MAX:
                memo.clear()
            memo[memo_key] = entry
        decision = by_name = entry.by_name
        if by_name.allowed:
            literal = parse_ip(record.host)
            try:
                found = [literal] if literal else await self.server.resolver.resolve(record.host)
            except ResolveFailed:
                found = []
            if entry.found is not found or entry.decision is None:
                entry.found = found
                entry.decision = decide_addresses(by_name, found, grant.deny_cidrs)
            decision = entry.decision
        record.decision, record.reason = decision.decision, decision.reason
        if not decision.allowed:
            self.server.denied(record, grant.session_id, decision.reason or "not_allowed")
            status = 502 if decision.reason == RESOLVE_FAILED else 403
            raise Refusal(status, decision.reason or "not_allowed", "egress denied")
        self.server.admitted(record, grant.session_id, decision)
        self._last = (grant, key, decision)
        return decision

    async def dial(self, decision: Decision, record: Record, **tls: object) -> Streams:
        # Only the addresses checked above, in the resolver's order: never a new lookup.
        last: Exception | None = None
        for address in decision.addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    return await asyncio.open_connection(
                        str(address),
                        record.port,
                        limit=2**16,
                        **tls,  # type: ignore[arg-type]
                    )
            except (OSError, TimeoutError) as exc:
                last = exc
        record.reason = "connect_failed"
        raise Refusal(502, "connect_failed", f"cannot reach {record.host}: {last}")
