"""Where each bin came from: the source recorded with it at ingestion.

An output can be fed from several sources (a synthetic bucket and the real one, two folders):
every ``bins`` row records the location it was listed in, and every later step reads a bin's
photo from there. Rows written before sources were recorded have none; readers give them the
configured source (``fallback``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.storage import Location
from bincount.core.tables import BINS, read_table

SOURCE = "source"


def filled_sources(bins: pa.Table, fallback: str) -> pa.ChunkedArray:
    """Each row's recorded source, ``fallback`` where none was recorded."""
    if SOURCE not in bins.column_names:
        return pa.chunked_array([pa.array([fallback] * bins.num_rows, pa.string())])
    return pc.fill_null(bins.column(SOURCE), fallback)


def of_source(bins: pa.Table, source: str) -> pa.ChunkedArray:
    """A mask of the rows of ``source`` (or with no recorded source, which count as its)."""
    return pc.equal(filled_sources(bins, source), source)


def recorded_sources(output: Location, fallback: str) -> list[str]:
    """Every source ``output``'s bins came from, sorted (``fallback`` for rows that record
    none); empty when there are no bins."""
    column = read_table(output, BINS, columns=[SOURCE]).column(SOURCE)
    return sorted({fallback if value is None else value for value in pc.unique(column).to_pylist()})


def sources_to_list(output: Location, given: str | None, fallback: str) -> list[str]:
    """Where to look for new objects: the source given, else every source of the output."""
    if given is not None:
        return [given]
    known = recorded_sources(output, fallback)
    if not known:
        raise ValueError(
            "Expected a source to list (--source or BINCOUNT_SOURCE), or an output whose bins "
            f"record theirs, but got neither: {output.uri()} has no bins. Ingest one first "
            "(bincount ingest --source S --output O) or pass --source"
        )
    return known


def open_sources(fallback: Location, urls: list[str]) -> dict[str, Location]:
    """A location for each of ``urls`` (and ``fallback``), read the way ``fallback`` is."""
    return {fallback.url: fallback, **{url: fallback.sibling(url) for url in urls}}


def locate(locations: dict[str, Location], uri: str) -> tuple[Location, str]:
    """The location an object URI is under (the longest matching root) and its key there."""
    best = None
    for location in locations.values():
        root = location.uri() + "/"
        if uri.startswith(root) and (best is None or len(root) > len(best.uri()) + 1):
            best = location
    if best is None:
        roots = sorted(location.uri() for location in locations.values())
        raise ValueError(f"Expected an image URI under one of {roots}, but got {uri}")
    return best, uri[len(best.uri()) + 1 :]


def fetch_uris(
    locations: dict[str, Location], uris: list[str], *, concurrency: int, max_bytes: int | None
) -> list[bytes | Exception]:
    """The bytes of every object URI, in order, each read from the location it is under (see
    :meth:`Location.fetch_many`: a missing or too large object comes back as its exception)."""
    by_location: dict[str, list[tuple[int, str]]] = {}
    for position, uri in enumerate(uris):
        location, key = locate(locations, uri)
        by_location.setdefault(location.url, []).append((position, key))
    payloads: list[bytes | Exception] = [b""] * len(uris)
    for url, wanted in by_location.items():
        fetched = locations[url].fetch_many(
            [key for _, key in wanted], concurrency=concurrency, max_bytes=max_bytes
        )
        for (position, _), payload in zip(wanted, fetched, strict=True):
            payloads[position] = payload
    return payloads
