"""Metadata objects as table rows: a bin row and its item rows, or a quarantine row with its
reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa

from bincount.core.chunks import (
    Reason,
    Rejection,
    Stage,
    quarantine_row,
)
from bincount.core.contracts import table_contract
from bincount.core.fetch import ObjectTooLarge
from bincount.core.limits import MetadataLimits
from bincount.core.tables import BINS, ITEMS
from bincount.data.metadata import (
    MalformedMetadata,
    image_id_from_key,
    parse_metadata,
)


def rows_from_objects(
    objects: Sequence[dict],
    payloads: Sequence[bytes | Exception],
    *,
    run_id: str,
    now: datetime,
    limits: MetadataLimits | None = None,
    source: str | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Bin rows, item rows and quarantine rows for fetched objects (pure: no I/O); each bin row
    records ``source``, the location the objects were listed in.

    Each object is isolated: whatever goes wrong while parsing or typing it becomes its
    quarantine row, and the others go on.
    """
    accepted: list[tuple[dict, dict, list[dict]]] = []
    rejects: list[dict] = []
    for obj, payload in zip(objects, payloads, strict=True):
        key = obj["key"]
        try:
            parsed = _parse_object(key, payload, limits)
        except MalformedMetadata as error:
            rejects.append(_reject(obj, error, run_id, now))
            continue
        except MemoryError:
            raise
        except Exception as error:  # a case the parser does not foresee still stops one object
            reason = f"Expected {key} to parse, but {type(error).__name__}: {error}"
            why = Rejection("parse_error", reason, type(error).__name__)
            rejects.append(_reject(obj, why, run_id, now))
            continue
        bin_row = {
            "image_id": parsed.image_id,
            "metadata_key": key,
            "image_key": parsed.image_key,
            "expected_quantity": parsed.expected_quantity,
            "sku_count": parsed.sku_count,
            "sku_quantity_sum": parsed.sku_quantity_sum,
            "etag": obj["etag"],
            "size": obj["size"],
            "last_modified": obj["last_modified"],
            "ingested_at": now,
            "run_id": run_id,
            "source": source,
        }
        accepted.append((obj, bin_row, [{**item, "etag": obj["etag"]} for item in parsed.items]))
    bins, items = _rows(accepted)
    if _table_error(BINS, bins) is None and _table_error(ITEMS, items) is None:
        return bins, items, rejects
    # Some object's rows do not fit the tables: find it instead of failing the chunk.
    kept = []
    for obj, bin_row, item_rows in accepted:
        error = _table_error(BINS, [bin_row]) or _table_error(ITEMS, item_rows)
        if error is None:
            kept.append((obj, bin_row, item_rows))
            continue
        reason = f"Expected values the bins and items tables can hold, but {error}"
        why = Rejection("unrepresentable", reason, type(error).__name__)
        rejects.append(_reject(obj, why, run_id, now))
    bins, items = _rows(kept)
    return bins, items, rejects


def _parse_object(key: str, payload: bytes | Exception, limits: MetadataLimits | None):
    if isinstance(payload, ObjectTooLarge):
        raise MalformedMetadata("too_large", str(payload), cause=payload)
    if isinstance(payload, Exception):
        raise MalformedMetadata(
            "unreadable", f"Expected a readable object, but got {payload!r}", cause=payload
        )
    return parse_metadata(key, payload, limits)


def _rows(accepted: list[tuple[dict, dict, list[dict]]]) -> tuple[list[dict], list[dict]]:
    return [row for _, row, _ in accepted], [item for _, _, rows in accepted for item in rows]


def _table_error(table: str, rows: list[dict]) -> Exception | None:
    """Why ``rows`` cannot become part of ``table``, or None when they can."""
    contract = table_contract(table)
    try:
        contract.conform(pa.Table.from_pylist(rows, schema=contract.schema))
    except MemoryError:
        raise
    except Exception as error:
        return error
    return None


def _reject(obj: dict, why: Reason, run_id: str, now: datetime) -> dict:
    return quarantine_row(
        Stage.INGEST,
        obj["key"],
        why,
        image_id=image_id_or_none(obj["key"]),
        etag=obj["etag"],
        run_id=run_id,
        now=now,
    )


def image_id_or_none(key: str) -> str | None:
    try:
        return image_id_from_key(key)
    except MalformedMetadata:
        return None
