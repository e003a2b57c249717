"""The proxy learns a new token key the moment a token names it (tokenkeys.py), and
made-up key ids cost the controller at most one call per ON_DEMAND_GAP, shared by every
request waiting (a request within the gap waits for the next call, not a 401). Against a real HTTP server answering /internal/token-keys."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.auth import Verifier
from proxy.tokenkeys import TokenKeyFetcher
from sandbox_controller.clock import ManualClock
from sandbox_controller.tokens import issue_token, public_key, secret_key_id, token_key_id

from .conftest import serve

OLD, NEW = b"the-secret-before-the-rotation", b"the-secret-after-the-rotation"


async def test_a_token_of_a_new_key_is_learnt_at_once_and_made_up_ids_are_throttled() -> None:
    keys = [public_key(OLD)]
    asked: list[float] = []

    async def token_keys(request: Request) -> Response:
        asked.append(0.0)
        await asyncio.sleep(0.05)  # long enough for concurrent askers to pile up
        return JSONResponse({"keys": keys})

    served = await serve(Starlette(routes=[Route("/internal/token-keys", token_keys)]))
    clock = ManualClock(start=1_000.0)
    verifier = Verifier(keys)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            fetcher = TokenKeyFetcher(
                client, f"http://{served.address}", "credential", verifier, clock
            )
            # The controller starts signing with NEW: the first token naming it is learnt.
            keys.append(public_key(NEW))
            kid = token_key_id(issue_token(NEW, "sess-1", 2_000.0))
            assert kid == secret_key_id(NEW) and not verifier.knows(kid)
            await fetcher.learn(kid)
            assert verifier.knows(kid) and len(asked) == 1
            await fetcher.learn(kid)  # known now: nothing asked
            assert len(asked) == 1

            # Made-up key ids: they wait out the gap, then one call answers them all.
            waiting = asyncio.gather(*(fetcher.learn(f"madeup{i:02}") for i in range(10)))
            await asyncio.sleep(0.1)
            assert len(asked) == 1 and not waiting.done()
            clock.advance(TokenKeyFetcher.ON_DEMAND_GAP)
            await asyncio.wait_for(waiting, 10)
            assert len(asked) == 2
    finally:
        await served.stop()
