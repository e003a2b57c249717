"""The operator console at /console: the pool, its sessions, users and recent ends,
live through one Server-Sent Events stream (issue 23). Server-rendered (Jinja2), with
its one script and stylesheet shipped in the package: no build step, nothing loaded
from another origin. It reads the pool through ``Scheduler`` only, as the API does.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..controller import Controller
from .access import Access
from .hub import Hub
from .pages import router

HERE = Path(__file__).parent


class Console:
    """Mounted on the controller's app; its feed runs while the process serves."""

    def __init__(self, app: FastAPI, controller: Controller) -> None:
        settings = controller.settings
        self._controller = controller
        self.access = Access(
            [t.token for t in settings.accepted_api_tokens], settings.console_token
        )
        self.hub = Hub(controller)
        templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        app.include_router(router(controller, self.access, self.hub, templates))
        app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    def start(self) -> None:
        self.access.keyed(self._controller.token_secret)
        self.hub.start()

    async def stop(self) -> None:
        await self.hub.stop()


__all__ = ["Console"]
