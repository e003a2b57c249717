"""The durable record: sessions, pods and the leader lease, in PostgreSQL or SQLite."""

from .db import Batch, Deposed, Fence, Store

__all__ = ["Batch", "Deposed", "Fence", "Store"]
