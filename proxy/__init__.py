"""The sandbox proxy: routes ``/s/{session_id}/...`` to the session's pod.

Its names are imported on first use (PEP 562), so ``proxy.egress``, a process of its own,
does not load the editor proxy's ASGI stack (FastAPI, uvicorn): 30 MiB of RSS."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import ProxyApp
    from .process import ProxyProcess

__all__ = ["ProxyApp", "ProxyProcess"]


def __getattr__(name: str) -> Any:
    if name == "ProxyApp":
        from .app import ProxyApp

        return ProxyApp
    if name == "ProxyProcess":
        from .process import ProxyProcess

        return ProxyProcess
    raise AttributeError(name)
