"""The durable record: sessions, pods and the leader lease, in PostgreSQL or SQLite."""

from .db import (
    Batch,
    Deposed,
    Fence,
    LeaseHolder,
    SchemaState,
    Store,
    UnknownRevision,
    same_pod_row,
)

__all__ = [
    "Batch",
    "Deposed",
    "Fence",
    "LeaseHolder",
    "SchemaState",
    "Store",
    "UnknownRevision",
    "same_pod_row",
]
