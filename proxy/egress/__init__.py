"""The egress proxy (issue 19): sandboxes' outbound HTTP and CONNECT, checked against
their policy, with secrets swapped in at the edge for the hosts they belong to.

Its own process (``sandbox-controller egress-proxy``, ``python -m proxy.egress``), apart
from the editor proxy, on raw asyncio streams rather than ASGI: it must keep up with squid.
"""
