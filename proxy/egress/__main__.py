"""``python -m proxy.egress [--host H] [--port P]``: the egress proxy alone (serving.py)."""

from __future__ import annotations

from ..serving import main

if __name__ == "__main__":
    from .process import EgressProxyProcess

    main(
        "python -m proxy.egress",
        None,
        settings_prefix="egress_proxy",
        make=EgressProxyProcess,
        # One line per controller call is noise (the connection's own line says what matters).
        quiet=("httpx", "httpcore"),
    )
