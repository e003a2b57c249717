"""The sandbox contract: what a sandbox image and the controller agree on.

README, "Bring your own sandbox image". A sandbox listens on ``POD_PORT``, answers
``HEALTH_PATH`` with 200 when it can serve, and may serve the hooks under
``HOOK_PREFIX``, each behind ``Authorization: Bearer <its claim secret>``; it reads
that secret from ``ENV_CLAIM_SECRET``. Said here once, for the hooks client, the
backends, devsandbox and kubesim. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

POD_PORT = 8080
HEALTH_PATH = "/healthz"

HOOK_PREFIX = "/_sandbox/"
CLAIM_PATH = HOOK_PREFIX + "claim"
STATUS_PATH = HOOK_PREFIX + "status"
RELEASE_PATH = HOOK_PREFIX + "release"
# Suspend and resume: the sandbox answers a tar stream of what it keeps, and takes it back.
SNAPSHOT_PATH = HOOK_PREFIX + "snapshot"
RESTORE_PATH = HOOK_PREFIX + "restore"
# Answers that mean "this sandbox does not implement the hook": it works as before.
HOOK_NOT_IMPLEMENTED = frozenset({404, 405, 501})
# From its snapshot on, a sandbox serves its hooks and health check only: every other
# request (and WebSocket upgrade) is answered 503 with this header, set to "1", and
# left untouched, so the proxy may send it to the session's next pod instead.
SUSPENDING_HEADER = "x-sandbox-suspending"

# The pod's claim secret: the sandbox accepts hook calls only with it.
ENV_CLAIM_SECRET = "SANDBOX_CLAIM_SECRET"
# The sandbox's own name, for its logs and pages (Docker sets it; Kubernetes may).
ENV_POD_NAME = "SANDBOX_POD_NAME"

_HOOK_KEY_CONTEXT = b"agent-sandbox claim secrets"
_EGRESS_CONTEXT = b"agent-sandbox egress credential:"


def hook_key(token_secret: bytes) -> bytes:
    """The key of every pod's claim secret, derived from the token secret so that
    replicas sharing it (the chart's Secret) derive the same pod secrets."""
    return hmac.new(token_secret, _HOOK_KEY_CONTEXT, hashlib.sha256).digest()


def claim_secret(key: bytes, create_id: str) -> str:
    """The claim secret of the pod made by create ``create_id`` (its create-id label).
    Derived, not stored: the controller that made the pod, or any later leader with the
    same key, computes it again from the label; the label alone tells nobody the secret."""
    return hmac.new(key, create_id.encode(), hashlib.sha256).hexdigest()


def claim_env(key: bytes | None, create_id: str) -> dict[str, str]:
    """The environment that hands a new sandbox its claim secret; none without a key
    (the sandbox then refuses every hook call)."""
    if key is None:
        return {}
    return {ENV_CLAIM_SECRET: claim_secret(key, create_id)}


def egress_credential(key: bytes, create_id: str) -> str:
    """The password the pod made by create ``create_id`` gives the egress proxy (its
    ``Proxy-Authorization`` user is the create id). Derived like the claim secret, under
    another label, so that neither tells the other."""
    return hmac.new(key, _EGRESS_CONTEXT + create_id.encode(), hashlib.sha256).hexdigest()
