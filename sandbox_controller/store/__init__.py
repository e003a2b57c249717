"""The durable record: sessions, pods and the leader lease, in PostgreSQL or SQLite."""

from .db import Batch, Deposed, Fence, LeaseHolder, SchemaState, Store, UnknownRevision

__all__ = ["Batch", "Deposed", "Fence", "LeaseHolder", "SchemaState", "Store", "UnknownRevision"]
