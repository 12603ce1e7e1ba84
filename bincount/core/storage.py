"""One storage layer for every location: a local folder, ``file://`` or ``s3://`` (fsspec/s3fs).

A :class:`Location` is a root plus the filesystem that serves it. Keys are always relative to the
root and use ``/`` (``metadata/00015.json``), so the same code reads the public ABID bucket, a
moto or MinIO endpoint, and a folder on disk.

Retries: one layer owns them on each path, and only for faults that are transient by what they
are (:func:`is_transient`: dropped connections, timeouts, truncated bodies, throttling, 429 and
5xx), never for a missing or forbidden key or a programming error.

* every signed S3 request (listing, reads, writes, deletes, Parquet datasets read through
  pyarrow) is retried by s3fs's request loop, ``max_attempts`` times, with this classifier;
  botocore sends each request once (its own retries would multiply s3fs's);
* an anonymous GET of a public object (a plain HTTP request, :meth:`Location.fetch_many`) is
  retried by this module's loop, with the same classifier and :class:`RetryPolicy`;
* a local folder is not retried: a disk error is not transient;
* Prefect tasks do not retry (a retry there would repeat every attempt below); they time out.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.asyn import sync

from bincount.core.fetch import _PERMANENT_ERRORS, _within, fetch_s3
from bincount.core.retries import RetryPolicy, is_transient
from bincount.core.settings import Settings


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key relative to the location root and its identity."""

    key: str
    etag: str
    size: int
    last_modified: datetime


LISTING_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("last_modified", pa.timestamp("us", tz="UTC")),
    ]
)


class Location:
    """A root URL (local path, ``file://`` or ``s3://bucket[/prefix]``) and its filesystem."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        anonymous: bool = False,
        key: str | None = None,
        secret: str | None = None,
        region: str = "us-east-1",
        max_attempts: int = 8,
        max_concurrency: int = 64,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        if not url:
            raise ValueError("Expected a location (path, file:// or s3:// URL), but got ''")
        protocol, separator, rest = url.partition("://")
        self.retry = RetryPolicy(max_attempts=max_attempts)
        # Kept so that a location can open others like itself (:meth:`sibling`).
        self._options = {
            "endpoint_url": endpoint_url,
            "anonymous": anonymous,
            "key": key,
            "secret": secret,
            "region": region,
            "max_attempts": max_attempts,
            "max_concurrency": max_concurrency,
            "connect_timeout_s": connect_timeout_s,
            "read_timeout_s": read_timeout_s,
        }
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.anonymous = anonymous
        self.endpoint_url = endpoint_url
        self.region = region
        if not separator:  # a plain path
            protocol, rest = "file", url
        if protocol == "file":
            self.is_s3 = False
            self.root = os.path.abspath(os.path.expanduser(rest)).rstrip("/") or "/"
            self.fs = fsspec.filesystem("file")
        elif protocol in ("s3", "s3a"):
            import s3fs  # imported here: local-only use needs no AWS stack

            self.is_s3 = True
            self.root = rest.strip("/")
            if not self.root:
                raise ValueError(f"Expected s3://bucket[/prefix], but got {url!r}")
            self.fs = s3fs.S3FileSystem(
                anon=anonymous,
                key=key,
                secret=secret,
                endpoint_url=endpoint_url,
                client_kwargs={"region_name": region},
                config_kwargs={
                    # One try per request: s3fs's loop below owns the retries.
                    "retries": {"total_max_attempts": 1, "mode": "standard"},
                    "max_pool_connections": max(10, max_concurrency),
                    "connect_timeout": connect_timeout_s,
                    "read_timeout": read_timeout_s,
                },
                skip_instance_cache=True,
                use_listings_cache=False,
            )
            # s3fs retries its own short list (connection errors, timeouts, truncated bodies,
            # SlowDown) and asks this classifier about every other error (process-wide).
            self.fs.retries = max_attempts
            s3fs.core.set_custom_error_handler(is_transient)
        else:
            raise ValueError(f"Expected a local path, file:// or s3:// URL, but got {url!r}")
        self.url = f"s3://{self.root}" if self.is_s3 else self.root

    @classmethod
    def source(cls, settings: Settings, url: str | None = None) -> Location:
        """The bucket bin images and metadata are read from (anonymously by default)."""
        return cls(
            url or settings.source,
            endpoint_url=settings.s3_endpoint_url,
            anonymous=settings.source_anonymous,
            region=settings.aws_region,
            max_attempts=settings.max_attempts,
            max_concurrency=settings.max_concurrency,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
        )

    @classmethod
    def output(cls, settings: Settings, url: str | None = None) -> Location:
        """Where tables are written, with the standard AWS credential chain (or given keys)."""
        key = settings.aws_access_key_id
        secret = settings.aws_secret_access_key
        return cls(
            url or settings.output,
            endpoint_url=settings.s3_endpoint_url,
            key=key.get_secret_value() if key else None,
            secret=secret.get_secret_value() if secret else None,
            region=settings.aws_region,
            max_attempts=settings.max_attempts,
            max_concurrency=settings.max_concurrency,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
        )

    def sibling(self, url: str | None) -> Location:
        """A location at ``url`` read the same way as this one (endpoint, credentials, retries);
        this one itself when ``url`` is None or names the same root."""
        if url is None or url == self.url:
            return self
        return Location(url, **self._options)

    def __repr__(self) -> str:  # never shows credentials
        return f"Location({self.url!r})"

    # -- paths -------------------------------------------------------------------------------
    def path(self, key: str = "") -> str:
        """The filesystem path of ``key`` (no protocol)."""
        key = key.strip("/")
        return f"{self.root}/{key}" if key else self.root

    def uri(self, key: str = "") -> str:
        """A URI a person or another tool can open: ``s3://bucket/key`` or an absolute path."""
        return f"s3://{self.path(key)}" if self.is_s3 else self.path(key)

    # -- single objects ------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def read_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes; with ``max_bytes``, read no further than one byte past it and
        raise :class:`ObjectTooLarge` when the object is larger."""
        if max_bytes is None:
            return self.fs.cat_file(self.path(key))
        data = self.fs.cat_file(self.path(key), start=0, end=max_bytes + 1)
        return _within(data, max_bytes, self.uri(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write so that no reader ever sees a half-written object."""
        path = self.path(key)
        if self.is_s3:  # an S3 PUT becomes visible whole or not at all
            self.fs.pipe_file(path, data)
            return
        directory, name = os.path.split(path)
        os.makedirs(directory, exist_ok=True)
        # A dot-prefixed temporary name: pyarrow.dataset and our listings skip it.
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            if self.fs.exists(self.path(key)):
                self.fs.rm_file(self.path(key))

    # -- listing -------------------------------------------------------------------------------
    def list(
        self, prefix: str, *, partitions: int = 1, page_size: int = 1000, starting_with: str = ""
    ) -> pa.Table:
        """Every object in folder ``prefix`` as a table of :data:`LISTING_SCHEMA`, sorted by key.

        ``starting_with`` narrows it to names that start so (``bin-images`` + ``1000`` lists
        ``bin-images/1000*``), on S3 in the request itself. On S3 the key space is cut into
        ``partitions`` contiguous ranges listed concurrently, each one paginated; the ranges
        cover every possible key, so nothing is missed however the keys are named.
        """
        prefix = prefix.strip("/") + "/" + starting_with
        if self.is_s3:
            rows = sync(self.fs.loop, self._list_s3, prefix, partitions, page_size)
        else:
            rows = self._list_local(prefix)
        table = pa.Table.from_pylist(rows, schema=LISTING_SCHEMA)
        return table.sort_by("key")

    def _list_local(self, prefix: str) -> list[dict]:
        folder, _, starting_with = prefix.rpartition("/")
        base = self.path(folder)
        rows: list[dict] = []
        if not os.path.isdir(base):
            return rows
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                full = os.path.join(dirpath, name)
                relative = os.path.relpath(full, base).replace(os.sep, "/")
                if name.startswith(".") or not relative.startswith(starting_with):
                    continue
                stat = os.stat(full)
                rows.append(
                    {
                        "key": f"{folder}/{relative}" if folder else relative,
                        # A local file has no ETag: size and mtime identify a version well enough.
                        "etag": f"{stat.st_size:x}-{stat.st_mtime_ns:x}",
                        "size": stat.st_size,
                        "last_modified": datetime.fromtimestamp(stat.st_mtime, UTC),
                    }
                )
        return rows

    async def _list_s3(self, prefix: str, partitions: int, page_size: int) -> list[dict]:
        bucket, _, root_prefix = self.root.partition("/")
        full_prefix = f"{root_prefix}/{prefix}" if root_prefix else prefix
        # One page first: a prefix that fits in a page costs one request, not one per range.
        first = await self.fs._call_s3(
            "list_objects_v2", Bucket=bucket, Prefix=full_prefix, MaxKeys=page_size
        )
        pages = [first.get("Contents", [])]
        if first.get("IsTruncated"):
            after = pages[0][-1]["Key"]
            bounds = [
                b for b in (full_prefix + b for b in key_range_bounds(partitions)) if b > after
            ]
            ranges = list(itertools.pairwise([after, *bounds, None]))
            pages += await asyncio.gather(
                *(self._list_s3_range(bucket, full_prefix, lo, hi, page_size) for lo, hi in ranges)
            )
        strip = len(root_prefix) + 1 if root_prefix else 0
        return [
            {
                "key": obj["Key"][strip:],
                "etag": obj["ETag"].strip('"'),
                "size": obj["Size"],
                "last_modified": obj["LastModified"],
            }
            for page in pages
            for obj in page
        ]

    async def _list_s3_range(
        self, bucket: str, prefix: str, after: str | None, up_to: str | None, page_size: int
    ) -> list[dict]:
        """Keys in ``(after, up_to]``: exclusive then inclusive, so ranges meet without overlap."""
        found: list[dict] = []
        token = None
        while True:
            kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
            if token:
                kwargs["ContinuationToken"] = token
            elif after:
                kwargs["StartAfter"] = after
            response = await self.fs._call_s3("list_objects_v2", **kwargs)
            for obj in response.get("Contents", []):
                if up_to is not None and obj["Key"] > up_to:
                    return found
                found.append(obj)
            if not response.get("IsTruncated"):
                return found
            token = response["NextContinuationToken"]

    # -- many objects ------------------------------------------------------------------------
    def fetch_many(
        self, keys: Sequence[str], *, concurrency: int, max_bytes: int | None = None
    ) -> list[bytes | Exception]:
        """The bytes of every key, in order, ``concurrency`` requests in flight.

        Transient faults are retried with backoff (by s3fs for signed requests, here for
        anonymous ones); a key that is gone or forbidden comes back as its exception instead
        of stopping the others, and so does one larger than ``max_bytes``
        (:class:`ObjectTooLarge`: a ranged read, never more than the limit plus one byte).
        Exhausted retries and errors that are not transient raise.
        """
        if self.is_s3:
            return sync(self.fs.loop, fetch_s3, self, list(keys), concurrency, max_bytes)
        with ThreadPoolExecutor(max_workers=min(concurrency, 8)) as pool:
            return list(pool.map(self._read_or_error, keys, [max_bytes] * len(keys)))

    def _read_or_error(self, key: str, max_bytes: int | None) -> bytes | Exception:
        try:
            return self.read_bytes(key, max_bytes=max_bytes)
        except _PERMANENT_ERRORS as error:
            return error

    def public_url(self, key: str) -> str:
        """A link a person can open: the plain HTTPS URL of an S3 object (path style on a
        custom endpoint), or a ``file://`` URL locally."""
        if not self.is_s3:
            return "file://" + quote(self.path(key), safe="/~")
        bucket, _, prefix = self.root.partition("/")
        object_key = quote(f"{prefix}/{key}" if prefix else key, safe="/~")
        if self.endpoint_url:
            return f"{self.endpoint_url.rstrip('/')}/{bucket}/{object_key}"
        if "." in bucket:  # dotted names break the wildcard certificate of virtual hosts
            return f"https://s3.{self.region}.amazonaws.com/{bucket}/{object_key}"
        return f"https://{bucket}.s3.{self.region}.amazonaws.com/{object_key}"

    # -- tables ------------------------------------------------------------------------------
    def write_parquet(self, key: str, table: pa.Table) -> None:
        """One Parquet file, written atomically."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        self.write_bytes(key, buffer.getvalue())

    def read_parquet(self, key: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(key)))

    def list_files(self, prefix: str) -> list[str]:
        """Visible file keys under ``prefix`` (dot- and underscore-prefixed names skipped)."""
        listing = self.list(prefix)
        return [
            key
            for key in listing.column("key").to_pylist()
            if not os.path.basename(key).startswith((".", "_"))
        ]


def key_range_bounds(partitions: int) -> list[str]:
    """Boundaries that cut a key space of digit-named objects into ``partitions`` ranges.

    ABID ids are digit strings, so the bounds are two-digit prefixes spread evenly; keys of any
    other shape still fall into exactly one range (the first or the last), never into none.
    """
    if partitions <= 1:
        return []
    step = 100 / partitions
    return sorted({f"{round(i * step):02d}" for i in range(1, partitions)})
