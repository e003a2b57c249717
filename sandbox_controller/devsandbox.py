"""The project's own tiny sandbox workload: it only proves the plumbing.

``GET /healthz`` 200; ``POST /echo`` returns the body, streamed; ``GET /events`` is a
Server-Sent Events stream (``?n=`` events, ``?interval=`` seconds apart); WebSocket
``/ws`` echoes text and binary frames and closes with the code it is sent in a
``close:<code>`` text frame.

Run it as ``python -m sandbox_controller.devsandbox --port 0``: it binds, then prints
``listening <host>:<port>`` on stdout, so whoever started it learns the port without
racing for a free one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


class Echo:
    """Streams the request body straight back. Raw ASGI, because Starlette's
    StreamingResponse listens for disconnects on the same ``receive`` the body
    arrives on, and would swallow body chunks."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        media = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", media)]}
        )
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
            if message.get("body"):
                await send(
                    {"type": "http.response.body", "body": message["body"], "more_body": True}
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def upload(request: Request) -> Response:
    """Counts the bytes of the body without keeping them."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(str(size))


async def headers(request: Request) -> Response:
    """What the sandbox was sent, so tests can prove credentials never reach it."""
    lines = [f"{k}: {v}" for k, v in request.headers.items()]
    lines.append(f"path: {request.url.path}")
    lines.append(f"query: {request.url.query}")
    return PlainTextResponse("\n".join(lines))


async def blob(request: Request) -> Response:
    """``GET /blob?size=N``: N bytes, streamed in 64 KiB chunks."""
    size = int(request.query_params.get("size", "0"))
    chunk = b"x" * 65536

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            piece = chunk[: min(left, len(chunk))]
            left -= len(piece)
            yield piece

    return StreamingResponse(
        body(), media_type="application/octet-stream", headers={"content-length": str(size)}
    )


async def events(request: Request) -> Response:
    count = int(request.query_params.get("n", "10"))
    interval = float(request.query_params.get("interval", "0.5"))

    async def stream() -> AsyncIterator[bytes]:
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            yield f"id: {i}\nevent: tick\ndata: {i}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                text = message["text"]
                if text.startswith("close:"):
                    await websocket.close(code=int(text.removeprefix("close:")))
                    return
                await websocket.send_text(text)
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


def build_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/echo", Echo(), methods=["POST", "PUT"]),
            Route("/upload", upload, methods=["POST", "PUT"]),
            Route("/headers", headers, methods=["GET", "POST"]),
            Route("/blob", blob),
            Route("/events", events),
            WebSocketRoute("/ws", ws_echo),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="devsandbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="", help="pod name, so the process can be recognised")
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    sys.stdout.flush()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    config = uvicorn.Config(
        build_app(), log_level="warning", access_log=False, lifespan="off", ws_ping_interval=None
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
