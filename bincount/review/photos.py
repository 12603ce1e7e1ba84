"""Photos beside the review list: links to each bin's image and small thumbnails for the UI."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from bincount.core.limits import ImageLimits
from bincount.core.sources import fetch_uris, locate
from bincount.core.storage import Location
from bincount.images.decode import decode_or_reason


def link(source: Location | Sequence[Location], image_uri: str) -> str:
    """A link a person can open: a public HTTPS URL for a source's own S3 objects."""
    found = _located(_as_locations(source), image_uri)
    return found[0].public_url(found[1]) if found else image_uri


def with_thumbnails(
    source: Location | Sequence[Location],
    rows: list[dict],
    *,
    size: int = 96,
    limits: ImageLimits | None = None,
) -> list[dict]:
    """Queue rows with a link to the photo and a small inline thumbnail: the photo as the model
    saw it (squashed to a square, decoded within the same limits), read from the source it is
    under. None where the photo can no longer be read; the row still shows."""
    limits = limits or ImageLimits()
    locations = _as_locations(source)
    readable = [row["image_uri"] for row in rows if _located(locations, row["image_uri"])]
    fetched = fetch_uris(locations, readable, concurrency=16, max_bytes=limits.max_bytes)
    payloads = dict(zip(readable, fetched, strict=True))
    shown = []
    for row in rows:
        payload = payloads.get(row["image_uri"])
        decoded = decode_or_reason(payload, size, limits) if payload is not None else None
        thumbnail = thumbnail_data_uri(decoded) if isinstance(decoded, np.ndarray) else None
        found = _located(locations, row["image_uri"])
        shown.append(
            {
                **row,
                "link": found[0].public_url(found[1]) if found else row["image_uri"],
                "thumbnail": thumbnail,
            }
        )
    return shown


def _as_locations(source: Location | Sequence[Location]) -> dict[str, Location]:
    sources = [source] if isinstance(source, Location) else list(source)
    return {location.url: location for location in sources}


def _located(locations: dict[str, Location], uri: str) -> tuple[Location, str] | None:
    try:
        return locate(locations, uri)
    except ValueError:
        return None


# -- showing a bin ---------------------------------------------------------------------------------
def thumbnail_data_uri(image: np.ndarray, *, quality: int = 70) -> str:
    """A decoded image (uint8, H×W×3) as a small JPEG ``data:`` URI, for markdown that renders
    inline (the Prefect UI shows such images in an artifact)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="JPEG", quality=quality
    )
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
