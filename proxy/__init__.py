"""The sandbox proxy: routes ``/s/{session_id}/...`` to the session's pod."""

from .app import ProxyApp
from .process import ProxyProcess

__all__ = ["ProxyApp", "ProxyProcess"]
