"""``python -m tests.security.hostile_controller [hostile sandbox flags]``: the controller
alone (``sandbox-controller serve``, settings from SANDBOX_*, the local backend) whose
sandboxes are hostile_sandbox processes started with those flags, e.g. ``--status
huge-json``. Prints ``listening <host>:<port>`` once serving, so a test that passed
``SANDBOX_PORT=0`` learns the port; SIGTERM stops it and every sandbox it started.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from sandbox_controller.backends.local import LocalBackend
from sandbox_controller.config import load_settings
from sandbox_controller.process import ControllerProcess
from sandbox_controller.sandbox_contract import hook_key
from sandbox_controller.serving import configure_logging, serve, stop_on_signals

from .hostile_sandbox import launcher


def main(argv: list[str]) -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    assert settings.token_secret, "SANDBOX_TOKEN_SECRET: the hooks' key derives from it"

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        backend = LocalBackend(
            settings.state_dir,
            stop_on_close=True,
            claim_key=hook_key(settings.token_secret.encode()),
            python=str(launcher(Path(settings.state_dir), argv)),
        )
        process = ControllerProcess(settings, backend=backend, stop_sandboxes_on_exit=True)
        await serve(process, stop, lambda: print(f"listening {settings.host}:{process.port}"))

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1:])
