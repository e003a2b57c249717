"""``python -m proxy [--host H] [--port P]``: the proxy alone (serving.py)."""

from __future__ import annotations

from .serving import main

if __name__ == "__main__":
    from .process import ProxyProcess

    main("python -m proxy", None, settings_prefix="proxy", make=ProxyProcess)
