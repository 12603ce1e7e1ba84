"""The platform's Parquet tables under the output location, and the views built on them.

Layout (every table a ``pyarrow.dataset``-readable Parquet dataset)::

    <output>/bins/part-<id>.parquet
    <output>/items/part-<id>.parquet
    <output>/quarantine/stage=<stage>/part-<id>.parquet
    <output>/manifests/<version>/part-0.parquet
    <output>/scores/scored_date=<YYYY-MM-DD>/part-<id>.parquet
    <output>/review_queue/queued_date=<YYYY-MM-DD>/part-<queue id>.parquet

Part files are immutable and written atomically; bookkeeping files start with ``_`` so that
dataset readers skip them.

A table exists from the first run that decides it, with zero rows when that run found nothing
to write: a part with no rows still holds the contract's schema, and in a partitioned table it
sits in a partition folder, so every reader (pandas, pyarrow's dataset, DuckDB, polars, Athena)
finds the documented columns and reads zero rows instead of failing on a missing folder.
"""

from __future__ import annotations

import hashlib
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from bincount.core.contracts import TableContract, table_contract
from bincount.core.storage import Location

BINS = "bins"
ITEMS = "items"
QUARANTINE = "quarantine"
MANIFESTS = "manifests"
SCORES = "scores"
REVIEW_QUEUE = "review_queue"


def part_key(table: str, part: str, partition: dict[str, str] | None = None) -> str:
    """``quarantine/stage=ingest/part-<part>.parquet``."""
    folders = [table, *(f"{k}={v}" for k, v in (partition or {}).items())]
    return posixpath.join(*folders, f"part-{part}.parquet")


def write_part(
    output: Location,
    table_name: str,
    part: str,
    rows: pa.Table | list[dict],
    *,
    partition: dict[str, str] | None = None,
) -> str:
    """Write one immutable part file of ``table_name``, conformed to its contract."""
    contract = table_contract(table_name)
    if isinstance(rows, list):
        rows = pa.Table.from_pylist(rows, schema=contract.schema)
    missing = set(contract.partitioning) - set(partition or {})
    if missing:
        raise ValueError(f"Expected partition values for {sorted(missing)} of {table_name}")
    in_path = [name for name in partition or {} if name in rows.column_names]
    table = contract.conform(rows.drop_columns(in_path), files_only=True)
    key = part_key(table_name, part, partition)
    output.write_parquet(key, table)
    return key


def start_table(
    output: Location, table_name: str, part: str, *, partition: dict[str, str] | None = None
) -> str | None:
    """Write a part of ``table_name`` with no rows (its contract's schema) unless the table has a
    part already: the run that decides a table but has nothing to put in it still makes it
    readable. Returns the key written, or None."""
    if part_names(output, table_name):
        return None
    return write_part(output, table_name, part, [], partition=partition)


def read_table(
    output: Location,
    table_name: str,
    *,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
) -> pa.Table:
    """Every row of ``table_name`` (empty, with the contract's schema, when none is written),
    or those matching ``filter``. The column ``__filename`` names each row's part file."""
    contract = table_contract(table_name)
    return _dataset(output, contract).to_table(columns=columns, filter=filter)


def _dataset(output: Location, contract: TableContract) -> ds.Dataset:
    if not output.exists(contract.name):
        return ds.dataset(contract.schema.empty_table())
    filesystem = None
    if output.is_s3:
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        filesystem = PyFileSystem(FSSpecHandler(output.fs))
    partitioning = (
        ds.partitioning(contract.partition_schema, flavor="hive") if contract.partitioning else None
    )
    return ds.dataset(
        output.path(contract.name),
        schema=contract.schema,
        format="parquet",
        filesystem=filesystem,
        partitioning=partitioning,
    )


def part_names(output: Location, table_name: str, partition: dict[str, str] | None = None) -> set:
    """The ``<id>`` of every committed ``part-<id>.parquet`` of one partition of a table, or of
    the whole table (every partition) when none is named."""
    folder = posixpath.dirname(part_key(table_name, "x", partition))
    names = set()
    for key in output.list_files(folder):
        name = posixpath.basename(key)
        if (partition is None or posixpath.dirname(key) == folder) and name.startswith("part-"):
            names.add(name.removeprefix("part-").removesuffix(".parquet"))
    return names


def current_bins(output: Location, fallback_source: str | None = None) -> pa.Table:
    """The latest ingested version of every metadata object of every source (bins is an
    append-only history); rows without a recorded source get ``fallback_source``."""
    return newest_versions(read_table(output, BINS), fallback_source)


def newest_versions(bins: pa.Table, fallback_source: str | None = None) -> pa.Table:
    """The newest row (by ``ingested_at``) of each ``metadata_key`` of each source of bins rows,
    by image id. A row without a recorded source counts as ``fallback_source``'s (and gets it)."""
    if bins.num_rows == 0:
        return bins
    if "source" in bins.column_names and fallback_source is not None:
        index = bins.column_names.index("source")
        bins = bins.set_column(
            index, "source", pc.fill_null(bins.column("source"), fallback_source)
        )
    # Source and key side by side: the same key in two sources names two bins.
    identity = (
        pc.binary_join_element_wise(
            pc.fill_null(bins.column("source"), ""), bins.column("metadata_key"), "\x1f"
        )
        if "source" in bins.column_names
        else bins.column("metadata_key")
    )
    bins = bins.append_column("__identity", identity)
    ordered = bins.sort_by([("__identity", "ascending"), ("ingested_at", "descending")])
    keys = ordered.column("__identity")
    # After the sort the first row of each key is its newest version.
    first = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.combine_chunks()])
    return ordered.filter(keep).drop_columns(["__identity"]).sort_by("image_id")


def bins_fingerprint(bins: pa.Table) -> str:
    """Which object versions a bins table holds: what a validation covered."""
    return fingerprint(bins, ["metadata_key", "etag"]) if bins.num_rows else "empty"


def fingerprint(table: pa.Table, columns: list[str]) -> str:
    """A content hash of ``columns`` over all rows, independent of row order and chunking."""
    digest = hashlib.sha256()
    ordered = table.select(columns).sort_by([(c, "ascending") for c in columns])
    for column in columns:
        digest.update(column.encode())
        for value in ordered.column(column).to_pylist():
            digest.update(b"\x1f" + repr(value).encode())
    return digest.hexdigest()[:16]
