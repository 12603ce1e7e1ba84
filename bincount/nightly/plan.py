"""Which images a night scores: new images listed against the scores already committed, in
chunks."""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.chunks import (
    ChunkProtocol,
    Parts,
    Stage,
    check_plan_arguments,
    cut,
    part_name,
    totals,
)
from bincount.core.pending import settle_pending
from bincount.core.storage import Location
from bincount.core.tables import (
    SCORES,
)
from bincount.data.metadata import IMAGE_PREFIX

logger = logging.getLogger(__name__)


# -- planning ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringPlan:
    """The images to score, in chunks, and how many were left out and why."""

    source: str
    prefix: str
    model_version: str
    listed: int
    not_images: int
    already_scored: int
    chunks: list[list[str]]
    started_at: datetime
    discarded_orphan_parts: int = 0

    @property
    def new(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)


def plan_scoring(
    source: Location,
    output: Location,
    *,
    model_version: str,
    prefix: str = f"{IMAGE_PREFIX}/",
    limit: int | None = None,
    chunk_size: int = 5000,
    partitions: int = 16,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ScoringPlan:
    """List the images under ``prefix``, leave out those already scored, cut the rest in chunks.

    ``prefix`` is a folder (``bin-images/``) or a folder and the start of names
    (``bin-images/1000`` scores ids starting with 1000). A first night with nothing to score
    commits one empty chunk: the scores table (and the score quarantine) exist from then on.
    """
    check_plan_arguments(limit=limit, chunk_size=chunk_size)
    started_at = clock()
    orphans = SCORING.discard_uncommitted(output)
    done = settle_score_pending(output)
    folder, starting_with = _split_prefix(prefix)
    listing = source.list(folder, partitions=partitions, starting_with=starting_with)
    lowered = pc.utf8_lower(listing.column("key"))
    is_image = functools.reduce(pc.or_, (pc.ends_with(lowered, s) for s in IMAGE_SUFFIXES))
    images = listing.filter(is_image)
    uris = pa.array([source.uri(key) for key in images.column("key").to_pylist()], pa.string())
    fresh = pc.invert(pc.is_in(uris, value_set=done))
    new = images.filter(fresh).column("key").to_pylist()
    already = images.num_rows - len(new)
    chunks = cut(new, chunk_size, limit=limit)
    if not chunks:
        partition = {"scored_date": f"{started_at:%Y-%m-%d}"}
        SCORING.commit_nothing(output, chunk_part_name([]), marker_partition=partition)
    logger.info(
        "listed %d images under %s: %d already scored, %d to score",
        images.num_rows,
        source.uri(prefix),
        already,
        sum(len(chunk) for chunk in chunks),
    )
    return ScoringPlan(
        source=source.uri(),
        prefix=prefix,
        model_version=model_version,
        listed=listing.num_rows,
        not_images=listing.num_rows - images.num_rows,
        already_scored=already,
        chunks=chunks,
        started_at=started_at,
        discarded_orphan_parts=orphans,
    )


def _split_prefix(prefix: str) -> tuple[str, str]:
    prefix = prefix.lstrip("/")
    if not prefix:
        raise ValueError("Expected an image prefix such as bin-images/, but got ''")
    if prefix.endswith("/") or "/" not in prefix:
        return prefix.rstrip("/"), ""
    folder, _, starting_with = prefix.rpartition("/")
    return folder, starting_with


def scored_uris(output: Location) -> pa.Array:
    """The watermark: every image URI scored, or quarantined by scoring."""
    done = SCORING.done(output, ["image_uri"], ["object_key"]).column("image_uri")
    return done.combine_chunks() if done.num_chunks else pa.array([], pa.string())


def settle_score_pending(output: Location) -> pa.Array:
    """Fold the scoring's pending rows, one per image, without those scored since; the
    watermark (:func:`scored_uris`) it was settled against."""
    done = scored_uris(output)
    settle_pending(output, Stage.SCORE, pa.table({"object_key": done}))
    return done


def discard_uncommitted_score_parts(output: Location) -> int:
    """Delete score-quarantine parts of chunks whose scores part never landed."""
    return SCORING.discard_uncommitted(output)


def image_id_from_image_key(key: str) -> str:
    """``bin-images/01057.jpg`` → ``01057`` (a string: leading zeros are part of the id)."""
    return posixpath.splitext(posixpath.basename(key))[0]


def chunk_part_name(image_uris: Sequence[str]) -> str:
    """A name derived from the chunk's image URIs, so a retried chunk rewrites the same files
    and two sources holding the same keys (``bin-images/00001.jpg``) never share a part."""
    return part_name(image_uris)


def combined_plan(plans: Sequence[ScoringPlan]) -> ScoringPlan:
    """One plan standing for the plans of a run over several sources (for its summary)."""
    if not plans:
        raise ValueError("Expected at least one scoring plan, but got none")
    if len({plan.model_version for plan in plans}) > 1:
        raise ValueError(
            f"Expected one model for the whole run, but got "
            f"{sorted({plan.model_version for plan in plans})}"
        )
    first = plans[0]
    return ScoringPlan(
        source=", ".join(plan.source for plan in plans),
        prefix=first.prefix,
        model_version=first.model_version,
        **totals(plans, "listed", "not_images", "already_scored", "discarded_orphan_parts"),
        chunks=[chunk for plan in plans for chunk in plan.chunks],
        started_at=min(plan.started_at for plan in plans),
    )


# A chunk writes its quarantine part, then its scores part (in its date's partition): the marker.
SCORING = ChunkProtocol(Stage.SCORE, marker=Parts(SCORES))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
