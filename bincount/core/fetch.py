"""Reading many S3 objects at once: signed GETs through s3fs, or plain HTTP GETs of public
objects, each with its own limit, retries and per-object errors.

This module sits below :mod:`bincount.core.storage`: it reads through any :class:`Bucket`, the
few attributes it needs, and a storage ``Location`` is one."""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Protocol

from bincount.core.retries import RetryPolicy, _http_error, is_transient


class Bucket(Protocol):
    """An S3 root read by :func:`fetch_s3`: its s3fs filesystem, how to name a key, and how
    patiently to read it."""

    fs: Any  # an s3fs.S3FileSystem (its async _cat_file)
    anonymous: bool
    connect_timeout_s: float
    read_timeout_s: float
    retry: RetryPolicy

    def path(self, key: str = "") -> str: ...

    def uri(self, key: str = "") -> str: ...

    def public_url(self, key: str) -> str: ...


# What an object can be, not what the platform did wrong: fetch_many hands these back per key
# (they become quarantine rows) instead of failing the others. ObjectTooLarge is a ValueError.
_PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, ValueError)


async def fetch_s3(
    location: Bucket, keys: list[str], concurrency: int, max_bytes: int | None
) -> list[bytes | Exception]:
    gate = asyncio.Semaphore(concurrency)
    session = None
    if location.anonymous:
        import aiohttp

        # Public objects need no signature: a plain HTTP GET costs a fraction of the CPU of
        # botocore's request pipeline, which is what bounds a client with many in flight.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                # A body trickled a byte at a time never trips sock_read: total bounds it.
                total=max(60.0, location.read_timeout_s),
                sock_connect=location.connect_timeout_s,
                sock_read=location.read_timeout_s,
            ),
            auto_decompress=False,
        )

    # A limit is a ranged GET of its first limit + 1 bytes: enough to know it is exceeded.
    ranged = {} if max_bytes is None else {"start": 0, "end": max_bytes + 1}
    headers = {} if max_bytes is None else {"Range": f"bytes=0-{max_bytes}"}

    async def signed_get(key: str) -> bytes:
        try:
            # One GET: with max_concurrency > 1 s3fs sends a HEAD first to plan ranged
            # reads, doubling the requests for objects of a few KB.
            return await location.fs._cat_file(location.path(key), max_concurrency=1, **ranged)
        except OSError as error:
            if not ranged or error.errno != errno.EINVAL:
                raise
            # S3 answers a range over an empty object with 416 (InvalidRange).
            return await location.fs._cat_file(location.path(key), max_concurrency=1)

    async def get(key: str) -> bytes:
        if session is None:
            data = await signed_get(key)
        else:
            async with session.get(location.public_url(key), headers=headers) as response:
                if response.status == 416 and headers:  # a range over an empty object
                    data = b""
                elif response.status in (200, 206):
                    data = await _read_at_most(response, max_bytes)
                else:
                    raise _http_error(response.status, location.uri(key), await response.read())
        return data if max_bytes is None else _within(data, max_bytes, location.uri(key))

    async def fetch(key: str) -> bytes | Exception:
        # Signed GETs are retried inside s3fs; anonymous ones here, and only here.
        attempts = location.retry.max_attempts if session is not None else 1
        async with gate:
            for attempt in range(attempts):
                try:
                    return await get(key)
                except _PERMANENT_ERRORS as error:
                    return error
                except Exception as error:
                    if not is_transient(error) or attempt + 1 == attempts:
                        raise
                    await asyncio.sleep(location.retry.delay(attempt))
            raise AssertionError("unreachable")

    try:
        return await asyncio.gather(*(fetch(key) for key in keys))
    finally:
        if session is not None:
            await session.close()


def _within(data: bytes, max_bytes: int, uri: str) -> bytes:
    if len(data) > max_bytes:
        raise ObjectTooLarge(uri, max_bytes)
    return data


async def _read_at_most(response, max_bytes: int | None) -> bytes:
    """The body, or its first ``max_bytes + 1`` bytes when a server ignores the range."""
    if max_bytes is None:
        return await response.read()
    parts, size = [], 0
    async for block in response.content.iter_chunked(64 * 1024):
        parts.append(block)
        size += len(block)
        if size > max_bytes:
            break
    return b"".join(parts)[: max_bytes + 1]


class ObjectTooLarge(ValueError):
    """An object larger than the reader's limit; no more than the limit plus one byte was read."""

    def __init__(self, uri: str, limit: int) -> None:
        super().__init__(f"Expected at most {limit:,} bytes at {uri}, but the object is larger")
        self.uri = uri
        self.limit = limit

    def __reduce__(self):  # crosses process pools with its fields, not its message
        return type(self), (self.uri, self.limit)
