"""Score bin images with a registered model and flag bins whose count disagrees with the record.

``<output>/scores/scored_date=<YYYY-MM-DD>/part-<id>.parquet`` (contract
``data_contracts/schemas/scores.json``) holds one row per image. Exactly once by construction,
as ingestion is:

* the scores table, with the score quarantine (images that would not decode), is the
  watermark: an image whose URI is in either is never scored again;
* images are scored in chunks; a chunk writes its quarantine part first and its scores part
  last, atomically: the scores part (empty if nothing in the chunk decoded) is its commit
  marker;
* a run killed midway leaves at most a quarantine part without its scores part; the next run
  deletes it before reading the watermark and scores that chunk again;
* an image that could not be read (access denied, gone) is no verdict: it becomes a
  ``pending`` row, outside the watermark, and the next run scores it
  (:mod:`bincount.core.pending`); most of a chunk unread for one fault stops the run before
  the chunk commits.

A chunk's rows carry how likely the model finds each record (``p_recorded``,
:mod:`bincount.review.ranking`); once every chunk is in, :mod:`bincount.review.queue` ranks
the night and fills in ``review_rank`` and ``needs_review``.

Within a chunk, fetching and decoding run ahead of the model in background threads
(:class:`~bincount.images.prefetch.Prefetched`), so the model rarely waits for images.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bincount.core.chunks import (
    Stage,
    quarantine_row,
)
from bincount.core.faults import FAULT_CODES, check_faults, raise_if_tripped
from bincount.core.limits import ImageLimits
from bincount.core.pending import pending_keys, pending_row, record_pending
from bincount.core.progress import Progress
from bincount.core.sources import of_source
from bincount.core.storage import Location
from bincount.core.tables import (
    BINS,
    newest_versions,
    read_table,
)
from bincount.data.metadata import IMAGE_PREFIX
from bincount.images.decode import UndecodableImage
from bincount.images.stats import INPUT_STATISTICS, STATISTIC_TYPES
from bincount.nightly.plan import (
    SCORING,
    chunk_part_name,
    image_id_from_image_key,
    plan_scoring,
    settle_score_pending,
)
from bincount.nightly.scorer import Scorer, decoded_batches, load_scorer
from bincount.nightly.summary import ChunkResult, ScoringSummary, summarize
from bincount.review.queue import queue_reviews
from bincount.review.ranking import (
    ReviewPolicy,
    disagrees,
    discrepancy_score,
    record_probability,
)

logger = logging.getLogger(__name__)

REVIEW_LIST_SIZE = 25  # the top of the queue shown in the run's summary


def score_chunk(
    source: Location,
    output: Location,
    scorer: Scorer,
    keys: Sequence[str],
    *,
    batch_size: int = 64,
    concurrency: int = 64,
    limits: ImageLimits | None = None,
    run_id: str = "",
    fault_share: float = 0.5,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChunkResult:
    """Score one chunk of image keys and commit it: quarantine part first, scores part last.
    Images not read are left pending; more than ``fault_share`` of the chunk unread for one
    fault raises :class:`~bincount.core.faults.SourceUnreadable` before the chunk commits."""
    raise_if_tripped(Stage.SCORE, source.url, run_id)
    started = time.perf_counter()
    expected = expected_quantities(
        output, [image_id_from_image_key(k) for k in keys], source=source.url
    )
    scored_keys: list[str] = []
    probabilities: list[np.ndarray] = []
    failures: list[tuple[str, UndecodableImage]] = []
    statistics: list[pa.Table] = []
    model_seconds = 0.0
    progress = Progress(logger, f"scored images of chunk {keys[0] if keys else ''}..", len(keys))
    for batch in decoded_batches(
        source,
        keys,
        size=scorer.image_size,
        batch_size=batch_size,
        concurrency=concurrency,
        limits=limits,
        device=scorer.runtime.device,
        host_share=scorer.host_share,
    ):
        failures.extend(batch.failures)
        if batch.keys:
            tick = time.perf_counter()
            probabilities.append(scorer.probabilities(batch.images))
            model_seconds += time.perf_counter() - tick
            scored_keys.extend(batch.keys)
            statistics.append(batch.statistics)
        progress.advance(len(batch.keys) + len(batch.failures))

    now = clock()
    width = scorer.model.num_classes
    stacked = np.concatenate(probabilities) if probabilities else np.zeros((0, width), np.float32)
    table = score_table(
        source,
        scored_keys,
        stacked,
        scorer.counts(stacked),
        expected=expected,
        max_count=scorer.max_count,
        open_top=scorer.open_top,
        model_version=scorer.version,
        run_id=run_id,
        scored_at=now,
        statistics=pa.concat_tables(statistics) if statistics else None,
    )
    part = chunk_part_name([source.uri(key) for key in keys])
    unread = [(key, fault) for key, fault in failures if fault.code in FAULT_CODES]
    failures = [(key, fault) for key, fault in failures if fault.code not in FAULT_CODES]
    # Read before this chunk's own pending rows are written: which faults are retries.
    retried = pending_keys(output, Stage.SCORE) if unread else ()
    record_pending(
        output,
        Stage.SCORE,
        part,
        [
            pending_row(
                Stage.SCORE,
                source.uri(key),
                fault,
                image_id=image_id_from_image_key(key),
                run_id=run_id,
                now=now,
            )
            for key, fault in unread
        ],
    )
    check_faults(
        Stage.SCORE,
        [(source.uri(key), fault) for key, fault in unread],
        len(keys),
        share=fault_share,
        pending=retried,
        source=source.url,
        run_id=run_id,
    )
    rejects = [
        quarantine_row(
            Stage.SCORE,
            source.uri(key),
            fault,
            image_id=image_id_from_image_key(key),
            run_id=run_id,
            now=now,
        )
        for key, fault in failures
    ]
    part_key = SCORING.commit(
        output, part, table, rejects=rejects, marker_partition={"scored_date": f"{now:%Y-%m-%d}"}
    )
    discrepancy = table.column("discrepancy")
    return ChunkResult(
        part=part,
        scored=table.num_rows,
        quarantined=len(failures),
        discrepancies=pc.sum(discrepancy).as_py() or 0,
        judged=table.num_rows - table.column("p_recorded").null_count,
        unknown_expected=discrepancy.null_count,
        seconds=time.perf_counter() - started,
        model_seconds=model_seconds,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        part_key=part_key,
        pending=len(unread),
    )


def score_table(
    source: Location,
    keys: Sequence[str],
    probabilities: np.ndarray,
    counts: np.ndarray,
    *,
    expected: dict[str, int],
    max_count: int,
    open_top: bool,
    model_version: str,
    run_id: str,
    scored_at: datetime,
    statistics: pa.Table | None = None,
) -> pa.Table:
    """Scores rows (pure: no I/O), with the contract's columns and the partition column; the
    night's ``review_rank`` and ``needs_review`` stay null until the queue is ranked, and the
    image statistics (:mod:`bincount.images.stats`, one row per key) null when not given."""
    ids = [image_id_from_image_key(key) for key in keys]
    counts = counts.astype(np.int32)
    confidence = (
        probabilities[np.arange(len(counts)), counts]
        if len(counts)
        else np.zeros(0, probabilities.dtype)
    )
    known = [expected.get(image_id) for image_id in ids]
    p_recorded = record_probability(probabilities, known, max_count=max_count, open_top=open_top)
    n, width = probabilities.shape
    flat = pa.array(probabilities.astype(np.float32).reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, n * width + 1, width), pa.int32())
    return pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "image_uri": pa.array([source.uri(key) for key in keys], pa.string()),
            "predicted_count": pa.array(counts, pa.int32()),
            "predicted_overflow": pa.array(open_top & (counts > max_count), pa.bool_()),
            "count_probabilities": pa.ListArray.from_arrays(offsets, flat),
            "confidence": pa.array(confidence.astype(np.float32), pa.float32()),
            "expected_quantity": pa.array(known, pa.int32()),
            "discrepancy": pa.array(
                disagrees(counts, known, max_count=max_count, open_top=open_top), pa.bool_()
            ),
            "p_recorded": pa.array(p_recorded.astype(np.float32), pa.float32(), from_pandas=True),
            "discrepancy_score": pa.array(
                discrepancy_score(p_recorded).astype(np.float32), pa.float32(), from_pandas=True
            ),
            "review_rank": pa.nulls(n, pa.int32()),
            "needs_review": pa.nulls(n, pa.bool_()),
            **_statistics_columns(statistics, n),
            "model_version": pa.array([model_version] * n, pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


def _statistics_columns(statistics: pa.Table | None, n: int) -> dict[str, pa.Array]:
    if statistics is None:
        return {name: pa.nulls(n, STATISTIC_TYPES[name]) for name in INPUT_STATISTICS}
    if statistics.num_rows != n:
        raise ValueError(f"Expected image statistics for {n} images, but got {statistics.num_rows}")
    return {name: statistics.column(name) for name in INPUT_STATISTICS}


def expected_quantities(
    output: Location, image_ids: Sequence[str], *, source: str | None = None
) -> dict[str, int]:
    """EXPECTED_QUANTITY of each of ``image_ids`` from the newest ingested metadata: that of the
    bin ingested from ``source`` (or with no recorded source) when one is given and there is
    one, else of the bin with that id from any source (a bucket copied since it was ingested)."""
    columns = ["image_id", "metadata_key", "expected_quantity", "ingested_at", "source"]
    bins = read_table(output, BINS, columns=columns)
    bins = bins.filter(pc.is_in(bins.column("image_id"), pa.array(list(image_ids), pa.string())))
    found = _quantities(newest_versions(bins))
    if source is not None:
        found.update(_quantities(newest_versions(bins.filter(of_source(bins, source)), source)))
    return found


def _quantities(bins: pa.Table) -> dict[str, int]:
    return dict(
        zip(
            bins.column("image_id").to_pylist(),
            bins.column("expected_quantity").to_pylist(),
            strict=True,
        )
    )


def score_images(
    source: Location,
    output: Location,
    *,
    model: str | Scorer = "champion",
    prefix: str = f"{IMAGE_PREFIX}/",
    limit: int | None = None,
    review: ReviewPolicy | None = None,
    batch_size: int = 64,
    chunk_size: int = 5000,
    concurrency: int = 64,
    partitions: int = 16,
    device: str | None = None,
    limits: ImageLimits | None = None,
    run_id: str = "",
    fault_share: float = 0.5,
) -> ScoringSummary:
    """Score every image under ``prefix`` not scored yet and rank the night's review queue
    (the whole run, in one process; ``model`` a version, or a scorer already loaded)."""
    started = time.perf_counter()
    scorer = model if isinstance(model, Scorer) else load_scorer(output, model, device=device)
    plan = plan_scoring(
        source,
        output,
        model_version=scorer.version,
        prefix=prefix,
        limit=limit,
        chunk_size=chunk_size,
        partitions=partitions,
    )
    results = [
        score_chunk(
            source,
            output,
            scorer,
            chunk,
            batch_size=batch_size,
            concurrency=concurrency,
            limits=limits,
            run_id=run_id,
            fault_share=fault_share,
        )
        for chunk in plan.chunks
    ]
    queue = queue_reviews(
        output,
        review or ReviewPolicy(),
        run_id=run_id,
        run_parts={r.part_key for r in results},
        top=REVIEW_LIST_SIZE,
    )
    settle_score_pending(output)
    seconds = time.perf_counter() - started
    return summarize(plan, source, output, results, queue, seconds, limits=limits)
