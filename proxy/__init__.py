"""The sandbox proxy: routes ``/s/{session_id}/...`` to the session's pod."""

from .app import ProxyApp, create_proxy_app
from .server import ProxyServer, serve_proxy

__all__ = ["ProxyApp", "ProxyServer", "create_proxy_app", "serve_proxy"]
