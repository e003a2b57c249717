"""Open consoles, as browsers would keep them: each signs in and holds the live stream
opened for its page, which carries the page's live part on every change; only a part
too big for the stream is fetched (what console.js does).

    python benchmarks/console_clients.py BASE_URL TOKEN [--consoles 20] [--page /console/sessions]

Runs until killed; on SIGTERM prints one JSON line: events received, bytes
received, pages fetched.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import httpx


async def console(base: str, token: str, page: str, counts: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=None) as client:
        response = await client.post("/console/login", data={"token": token})
        if response.status_code != 303:  # signed in: a redirect to the pool page
            response.raise_for_status()
        fetching: asyncio.Task[None] | None = None

        async def fetch() -> None:
            try:
                answer = await client.get(page, headers={"X-Console-Fragment": "1"})
            except httpx.HTTPError:  # a kept-alive connection the server just closed
                counts["errors"] += 1
                return
            counts["fetches"] += 1
            counts["bytes"] += len(answer.content)

        # Counted in the raw bytes, not parsed line by line: on this one machine the
        # stand-in browsers should take as little CPU from the controller as they can.
        params = {"page": page}
        tail = b""
        async with client.stream("GET", "/console/events", params=params) as stream:
            async for chunk in stream.aiter_bytes():
                counts["bytes"] += len(chunk)
                seen = tail + chunk
                counts["events"] += seen.count(b"event: fragment")
                if b"event: refresh" in seen and (fetching is None or fetching.done()):
                    fetching = asyncio.ensure_future(fetch())  # too big for the stream
                tail = seen[-14:]  # shorter than either word: none counted twice


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("token")
    parser.add_argument("--consoles", type=int, default=20)
    parser.add_argument("--page", default="/console/sessions")
    args = parser.parse_args()
    counts = {"events": 0, "fetches": 0, "bytes": 0, "errors": 0}
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [
        asyncio.ensure_future(console(args.base, args.token, args.page, counts))
        for _ in range(args.consoles)
    ]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
