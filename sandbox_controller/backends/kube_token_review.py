"""API callers inside the cluster, known by their Kubernetes token (TokenReview).

With ``SANDBOX_TOKEN_REVIEW_USERS`` set, a bearer token that is none of the API tokens is
asked of the API server (``POST /apis/authentication.k8s.io/v1/tokenreviews``); it opens
the API if the server authenticates it as one of those user names (for a service
account: ``system:serviceaccount:<namespace>:<name>``), and the caller is then known by
that name. Off by default. Answers are kept ``TTL`` seconds (yes and no alike, keyed
by the token's SHA-256, at most ``MAX_KEPT``), so a busy caller costs the API server
one review every ``TTL`` and a flood of junk tokens one each; an API server that cannot
answer refuses the token (401, not kept), never lets it through.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from ..clock import Clock

log = logging.getLogger(__name__)


class TokenReviewer:
    TTL = 10.0
    DEADLINE = 5.0
    MAX_KEPT = 4096

    def __init__(self, api: k8s.ApiClient, users: Iterable[str], clock: Clock) -> None:
        self._api = api
        self._auth = k8s.AuthenticationV1Api(api)
        self._users = frozenset(users)
        self._clock = clock
        self._kept: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def review(self, token: str) -> str | None:
        """The user name the API server knows ``token`` by, if it is one of the allowed
        users; None otherwise (or if the API server cannot say now)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock.monotonic()
        kept = self._kept.get(key)
        if kept is not None and kept[1] > now:
            return kept[0]
        try:
            user = await self._ask(token)
        except (ApiException, OSError, TimeoutError) as exc:  # not kept: asked again
            log.warning("TokenReview failed, the token is refused: %s", _words(exc))
            return None
        self._kept[key] = (user, now + self.TTL)
        self._kept.move_to_end(key)
        while len(self._kept) > self.MAX_KEPT:
            self._kept.popitem(last=False)
        return user

    async def _ask(self, token: str) -> str | None:
        body = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token))
        answer = await self._auth.create_token_review(body, _request_timeout=self.DEADLINE)
        status = answer.status
        if status is None or not status.authenticated or status.user is None:
            return None
        name = status.user.username
        return name if name in self._users else None

    async def close(self) -> None:
        await self._api.close()


def _words(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return type(exc).__name__
