"""``sandbox-controller recover``: what a recovery holds, and the operator's word to let
it go. Talks to the running leader over its API (SANDBOX_CONTROLLER_URL, with
SANDBOX_API_TOKEN), as any operator call: GET /pool to show the ``RecoveryHeld``
condition, POST /admin/recovery/confirm to delete the held pods."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import httpx

HELD = "RecoveryHeld"
TIMEOUT = 30.0


def recover(url: str, token: str | None, *, confirm: bool, out: TextIO = sys.stdout) -> int:
    """0: done (or nothing held); 1: the controller refused or could not be reached."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT) as http:
            pool = _answer(http.get("/pool"))
            held = [c for c in pool.get("conditions", []) if c.get("type") == HELD]
            if not confirm:
                if not held:
                    print("recovery holds no pods", file=out)
                for condition in held:
                    print(f"{HELD} since {condition['since']}: {condition['message']}", file=out)
                    print("run `sandbox-controller recover --confirm` to delete them", file=out)
                return 0
            names = _answer(http.post("/admin/recovery/confirm"))["deleted_pods"]
    except (httpx.HTTPError, RefusedError) as exc:
        print(f"sandbox-controller: recover: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"deleting {len(names)} held pods" + (": " + " ".join(names) if names else ""), file=out)
    return 0


class RefusedError(Exception):
    pass


def _answer(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        why = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        why = response.text[:200]
    raise RefusedError(f"{response.status_code} {why}")
