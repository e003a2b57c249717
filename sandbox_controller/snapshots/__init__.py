"""Suspend and resume's archives: the stores (store.py, file_store.py, s3_store.py) and
the snapshot/restore hooks client (hook_client.py). ``open_store`` builds the store
the settings name, once, in the controller's startup. S3Store is imported only when
named: aiobotocore is about 0.17 s of CPU at every start (of ~2 s of imports), for a
store most deployments do not use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..config import Settings
from .file_store import FileStore
from .hook_client import RestoreFailed, SnapshotFailed, restore_snapshot, take_snapshot
from .store import (
    ArchiveInfo,
    ArchiveMissing,
    SnapshotStore,
    SnapshotTooLarge,
    StoreError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from .s3_store import S3Store

__all__ = [
    "ArchiveInfo",
    "ArchiveMissing",
    "FileStore",
    "RestoreFailed",
    "S3Store",
    "SnapshotFailed",
    "SnapshotStore",
    "SnapshotTooLarge",
    "StoreError",
    "StoreUnavailable",
    "open_store",
    "restore_snapshot",
    "take_snapshot",
]


def __getattr__(name: str) -> Any:
    if name == "S3Store":
        from .s3_store import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(settings: Settings) -> SnapshotStore | None:
    """The store ``SANDBOX_SNAPSHOT_STORE`` names; None when it is unset (suspension
    off). ValueError for a location that is neither."""
    location = settings.snapshot_store
    if not location:
        return None
    parts = urlsplit(location)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file store is on this machine: {location!r}")
        return FileStore(Path(unquote(parts.path)))
    if parts.scheme == "s3" and parts.netloc:
        from .s3_store import S3Store

        return S3Store(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=settings.snapshot_s3_endpoint_url,
            region=settings.snapshot_s3_region,
            access_key_id=settings.snapshot_s3_access_key_id,
            secret_access_key=settings.snapshot_s3_secret_access_key,
        )
    raise ValueError(f"not a snapshot store: {location!r} (file:///path or s3://bucket/prefix)")
