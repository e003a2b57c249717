"""Archives in a bucket of any S3-compatible store, through aiobotocore.

An archive larger than one part goes up as a multipart upload of PART_SIZE parts, read
from the sandbox into one buffer of one part, reused and sent in place (PartBody): a
500 MB archive holds one part in memory, never the archive. A smaller one is a single PutObject. A put that fails, is too large
or is cancelled aborts its upload, so no object (and no stored part) is left; an
upload that a crash left open is aborted by ``keys()`` (the orphan sweep's call) once
older than STALE_UPLOAD_AGE. The encoding rides as object metadata.

The client is made on first use (the controller's startup builds the store without
I/O) with short connect and read timeouts and few retries: a store that is down fails
a snapshot in seconds, which ends the session as before (issue 20, point 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from .store import (
    ArchiveInfo,
    ArchiveMissing,
    Bounded,
    StoreUnavailable,
    check_encoding,
    check_key,
)

# S3 wants parts of at least 5 MiB (but the last); 8 MiB is the SDKs' usual choice.
PART_SIZE = 8 * 1024 * 1024
GET_CHUNK = 1024 * 1024
STALE_UPLOAD_AGE = dt.timedelta(days=1)
# Cleaning up after a failure gets its own short deadline: the store may be the failure.
ABORT_TIMEOUT = 10.0
ARCHIVE_TYPE = "application/x-tar"
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
# What a store that is down, slow or refusing raises, from botocore or mid-body.
_STORE_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError)


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._options: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "config": AioConfig(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": 2, "mode": "standard"},
                # A custom endpoint (MinIO, Ceph, moto) is spoken to path-style.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                # Checksums only where S3 requires them: not every compatible store
                # takes the newer default ones.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        }
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def _s3(self) -> Any:
        async with self._opening:
            if self._client is None:
                client = get_session().create_client("s3", **self._options)
                self._client = await self._stack.enter_async_context(client)
            return self._client

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def put(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        encoding: str | None = None,
    ) -> int:
        name = self._object(key)
        meta: dict[str, Any] = {"ContentType": ARCHIVE_TYPE}
        if check_encoding(encoding) is not None:
            meta["Metadata"] = {"encoding": encoding}
        # One buffer of one part, filled in place and sent from where it lies: no
        # copy of a part is made, and its memory is the same for every part.
        buffer = bytearray(PART_SIZE)
        filled = 0
        source = Bounded(chunks, max_bytes)
        upload: str | None = None
        parts: list[dict[str, Any]] = []
        done = False
        writing = f"cannot write {key} to the S3 store"
        # Only the store's own calls are the store's failures: an error of the source
        # (the sandbox's stream) passes through as it is.
        try:
            with _unavailable(writing):
                s3 = await self._s3()
            async for chunk in source:
                view = memoryview(chunk)
                while view:
                    taken = min(len(view), PART_SIZE - filled)
                    buffer[filled : filled + taken] = view[:taken]
                    filled += taken
                    view = view[taken:]
                    if filled < PART_SIZE:
                        continue
                    with _unavailable(writing):
                        if upload is None:
                            started = await s3.create_multipart_upload(
                                Bucket=self.bucket, Key=name, **meta
                            )
                            upload = started["UploadId"]
                        body = PartBody(memoryview(buffer))
                        parts.append(await self._part(s3, name, upload, len(parts) + 1, body))
                    filled = 0
            last = PartBody(memoryview(buffer)[:filled])
            with _unavailable(writing):
                if upload is None:
                    await s3.put_object(Bucket=self.bucket, Key=name, Body=last, **meta)
                else:
                    if filled:
                        parts.append(await self._part(s3, name, upload, len(parts) + 1, last))
                    await s3.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=name,
                        UploadId=upload,
                        MultipartUpload={"Parts": parts},
                    )
            done = True
        finally:
            if not done and upload is not None:
                # Shielded: a cancelled put (the snapshot's deadline) still aborts.
                await asyncio.shield(self._abort(name, upload))
        return source.size

    async def _part(
        self, s3: Any, name: str, upload: str, number: int, body: PartBody
    ) -> dict[str, Any]:
        answer = await s3.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(self, name: str, upload: str) -> None:
        """Best effort: a store that is down keeps the parts until the sweep's keys()
        (or the bucket's lifecycle rule) aborts the upload."""
        with contextlib.suppress(*_STORE_ERRORS):
            async with asyncio.timeout(ABORT_TIMEOUT):
                s3 = await self._s3()
                await s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        name = self._object(key)
        try:
            s3 = await self._s3()
            answer = await s3.get_object(Bucket=self.bucket, Key=name)
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(GET_CHUNK):
                    yield chunk
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise ArchiveMissing(key) from None
            raise StoreUnavailable(f"cannot read {key}: {_words(exc)}") from None
        except _STORE_ERRORS as exc:
            raise StoreUnavailable(f"cannot read {key}: {_words(exc)}") from None

    async def info(self, key: str) -> ArchiveInfo:
        try:
            s3 = await self._s3()
            head = await s3.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise ArchiveMissing(key) from None
            raise StoreUnavailable(f"cannot read {key}: {_words(exc)}") from None
        except _STORE_ERRORS as exc:
            raise StoreUnavailable(f"cannot read {key}: {_words(exc)}") from None
        encoding = head.get("Metadata", {}).get("encoding")
        return ArchiveInfo(int(head["ContentLength"]), check_encoding(encoding))

    async def delete(self, key: str) -> None:
        try:
            s3 = await self._s3()
            await s3.delete_object(Bucket=self.bucket, Key=self._object(key))
        except _STORE_ERRORS as exc:
            raise StoreUnavailable(f"cannot delete {key}: {_words(exc)}") from None

    async def keys(self) -> list[str]:
        found: list[str] = []
        try:
            s3 = await self._s3()
            pages = s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            async for page in pages:
                found.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
            await self._abort_stale_uploads(s3)
        except _STORE_ERRORS as exc:
            raise StoreUnavailable(f"cannot list the S3 store: {_words(exc)}") from None
        return sorted(found)

    async def _abort_stale_uploads(self, s3: Any) -> None:
        """Uploads a crash left open (their parts cost storage but show as no object)."""
        now = dt.datetime.now(dt.UTC)
        listed = await s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        for upload in listed.get("Uploads", []):
            if now - upload["Initiated"] > STALE_UPLOAD_AGE:
                await self._abort(upload["Key"], upload["UploadId"])

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


class PartBody(io.RawIOBase):
    """A part, read where it lies in the put's buffer. File-like, so that botocore signs
    it by reading it and aiohttp sends it in small reads: a bytes body would be copied
    again into the socket's buffer while it drains (8 MiB more per upload)."""

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        size = max(0, min(len(target), len(self._view) - self._at))
        target[:size] = self._view[self._at : self._at + size]
        self._at += size
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """The store's failures (down, slow, refusing) as StoreUnavailable, in our words."""
    try:
        yield
    except _STORE_ERRORS as exc:
        raise StoreUnavailable(f"{what}: {_words(exc)}") from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _words(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return _code(exc) or "an error answer"
    return str(exc) or type(exc).__name__
