"""Session-token verification before and after key ids (issue 25), in one process.

    python benchmarks/token_bench.py [--rounds 5] [--n 2000]

A token from before key ids (``<session>.<expiry>.<signature>``) is checked against
every key until one fits; a token with a key id (``<kid>.<session>.<expiry>.<sig>``)
against the one key it names. Both kinds are verified by today's ``verify_token``, with
1 and with 3 keys (a rotation: the current secret and two previous ones; the signing key
last, the worst case for a token without a key id). Also: the proxy's per-request
cost of reading a token's key id, and the API's token lookup with 1 and 5 API tokens.
Rounds interleave the cases; medians of per-round means, in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox_controller.credentials import api_tokens, caller_of  # noqa: E402
from sandbox_controller.tokens import (  # noqa: E402
    _b64,
    issue_token,
    load_public_key,
    public_key,
    signing_key,
    token_key_id,
    verify_token,
)

SECRETS = [b"bench-secret-current-0123456789", b"bench-secret-prev-1-0123456789", b"bench-secret-prev-2-0123456789"]  # fmt: skip
EXPIRES = 4_000_000_000


def legacy_token(secret: bytes, session_id: str) -> str:
    payload = f"{_b64(session_id.encode())}.{EXPIRES}"
    return f"{payload}.{_b64(signing_key(secret).sign(payload.encode()))}"


def mean_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    one = [load_public_key(public_key(SECRETS[0]))]
    # The signing key last: a token without a key id tries the others first.
    three = [load_public_key(public_key(s)) for s in reversed(SECRETS)]
    legacy = legacy_token(SECRETS[0], "sess-bench")
    keyed = issue_token(SECRETS[0], "sess-bench", EXPIRES)
    tokens_1 = api_tokens("bench-api-token-0123456789", "")
    tokens_5 = api_tokens(None, ",".join(f"id{i}:bench-api-token-{i}-0123456789" for i in range(5)))
    cases: dict[str, Callable[[], object]] = {
        "verify, no key id, 1 key (before)": lambda: verify_token(one, legacy, 0),
        "verify, key id, 1 key (after)": lambda: verify_token(one, keyed, 0),
        "verify, no key id, 3 keys (before)": lambda: verify_token(three, legacy, 0),
        "verify, key id, 3 keys (after)": lambda: verify_token(three, keyed, 0),
        "issue a token (after)": lambda: issue_token(SECRETS[0], "sess-bench", EXPIRES),
        "proxy: read a token's key id": lambda: token_key_id(keyed),
        "API: find the caller, 1 token": lambda: caller_of(tokens_1, "bench-api-token-0123456789"),
        "API: find the caller, 5 tokens": lambda: caller_of(
            tokens_5, "bench-api-token-4-0123456789"
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            results[name].append(mean_us(fn, args.n))
    print(f"| case | median of {args.rounds} rounds, us | min, us |")
    print("|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} |")


if __name__ == "__main__":
    main()
