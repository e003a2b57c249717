"""An origin server for the fake internet, run inside a network namespace: HTTP on 80,
HTTPS (under the test CA) on 443 and 8443, and a source of zeros on 9000. It records
each request's headers to a JSON-lines file the test reads (what the origin really
received) and answers only a short JSON naming the address it was reached on, so a
swapped secret is never echoed back."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    record_path = ""
    static: Path | None = None  # files served as they are (a package index, a git repo)
    lock = threading.Lock()

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = {
            "method": self.command,
            "path": self.path,
            "local": self.connection.getsockname()[0],
            "port": self.connection.getsockname()[1],
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": len(body),
        }
        with self.lock, open(self.record_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        out = json.dumps(
            {"local": entry["local"], "port": entry["port"], "host": self.headers.get("host")}
        ).encode()
        ctype = "application/json"
        path = self.path.split("?", 1)[0]
        if self.static is not None and ".." not in path and path != "/":
            found = self.static / path.lstrip("/")
            if found.is_dir():
                found = found / "index.html"
            if found.is_file():  # else: the JSON answer
                out = found.read_bytes()
                ctype = "text/html" if found.suffix == ".html" else "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def _source(listener: socket.socket) -> None:
    """Port 9000: zeros to whoever connects, as fast as they are taken, until they go."""
    block = b"\0" * (1 << 16)
    while True:
        conn, _ = listener.accept()

        def pour(conn: socket.socket = conn) -> None:
            with conn, contextlib.suppress(OSError):
                while True:
                    conn.sendall(block)

        threading.Thread(target=pour, daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--static")
    args = parser.parse_args()
    Handler.record_path = args.record
    Handler.static = Path(args.static) if args.static else None
    servers = [ThreadingHTTPServer(("0.0.0.0", 80), Handler)]
    for port in (443, 8443):
        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        servers.append(server)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    source = socket.create_server(("0.0.0.0", 9000))
    threading.Thread(target=_source, args=(source,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
