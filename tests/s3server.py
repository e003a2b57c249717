"""An S3-compatible server for the tests: moto's standalone server (``moto[server]``,
the test extra) as a real process on a free loopback port, spoken to over HTTP like any
S3. The benchmark starts it the same way (benchmarks/suspend_bench.py).

``S3Server.kill()`` SIGKILLs it: the store down in the middle of an upload."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

# moto accepts any credentials; these name the test's own fake account.
ACCESS_KEY_ID = "testing-key-id"
SECRET_ACCESS_KEY = "testing-secret-key"
REGION = "us-east-1"


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    endpoint_url: str

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_listening(port: int, process: subprocess.Popen[bytes], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"moto's server did not listen on {port} within {within:g}s")


@contextlib.contextmanager
def s3_server(within: float = 30.0) -> Iterator[S3Server]:
    """A fresh, empty S3 (its own port and process; nothing shared with another run)."""
    # A port picked then released: moto takes no port 0. A clash fails loudly at start.
    port = _free_port()
    env = os.environ | {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = S3Server(process, f"http://127.0.0.1:{port}")
    try:
        _wait_listening(port, process, within)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
