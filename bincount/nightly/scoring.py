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
  deletes it before reading the watermark and scores that chunk again.

A chunk's rows carry how likely the model finds each record (``p_recorded``,
:mod:`bincount.review.ranking`); once every chunk is in, :mod:`bincount.review.queue` ranks
the night and fills in ``review_rank`` and ``needs_review``.

Within a chunk, fetching and decoding run ahead of the model in background threads
(:class:`~bincount.images.prefetch.Prefetched`), so the model rarely waits for images.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from bincount.core.chunks import (
    ChunkProtocol,
    Parts,
    Stage,
    check_plan_arguments,
    cut,
    part_name,
    quarantine_row,
    totals,
)
from bincount.core.limits import ImageLimits
from bincount.core.progress import Progress
from bincount.core.sources import fetch_uris, locate, of_source
from bincount.core.storage import Location
from bincount.core.tables import (
    BINS,
    SCORES,
    newest_versions,
    read_table,
)
from bincount.data.metadata import IMAGE_PREFIX
from bincount.images.cache import (
    UndecodableImage,
    decode_image,
    decode_or_reason,
)
from bincount.images.devicedecode import decode_on_device
from bincount.images.prefetch import Prefetched
from bincount.model.config import TrainConfig
from bincount.model.networks import CountingModel
from bincount.model.registry import load_model, resolve_version
from bincount.model.training import (
    Runtime,
    input_normalization,
    predict_batch,
    resolve_runtime,
    to_model_input,
)
from bincount.review.queue import NightQueue, queue_reviews
from bincount.review.ranking import (
    ReviewPolicy,
    disagrees,
    discrepancy_score,
    probability_text,
    record_probability,
    thumbnail_data_uri,
)

logger = logging.getLogger(__name__)

# A chunk writes its quarantine part, then its scores part (in its date's partition): the marker.
SCORING = ChunkProtocol(Stage.SCORE, marker=Parts(SCORES))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
REVIEW_LIST_SIZE = 25  # the top of the queue shown in the run's summary


# -- the model ---------------------------------------------------------------------------------
@dataclass
class Scorer:
    """A registered model ready to count: its input size and test-time flips come from its
    saved config, so it scores exactly as it was evaluated."""

    model: CountingModel
    version: str
    image_size: int
    flips: bool
    runtime: Runtime

    @property
    def max_count(self) -> int:
        return self.model.max_count

    @property
    def open_top(self) -> bool:
        return self.model.open_top

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 images (N, S, S, 3), on the host or the device → calibrated per-count
        probabilities (N, num_classes)."""
        mean, std = input_normalization(self.model)
        batch = to_model_input(images, mean=mean, std=std, device=self.runtime.device)
        _, probabilities = predict_batch(self.model, batch, runtime=self.runtime, flips=self.flips)
        return probabilities.numpy()

    def counts(self, probabilities: np.ndarray) -> np.ndarray:
        """The count the model's head predicts from per-count probabilities."""
        return self.model.count_from_probabilities(torch.from_numpy(probabilities)).numpy()


def load_scorer(output: Location, model: str = "champion", *, device: str | None = None) -> Scorer:
    """A registered model (a version, or ``champion``) on the best device present."""
    version = resolve_version(output, model)
    network, record = load_model(output, version)
    runtime = resolve_runtime(device)
    network = network.to(runtime.device, memory_format=torch.channels_last).eval()
    config = TrainConfig.model_validate(record["config"])
    return Scorer(
        model=network,
        version=version,
        image_size=config.image_size,
        flips=config.test_time_flips,
        runtime=runtime,
    )


# -- images ahead of the model ------------------------------------------------------------------
@dataclass
class DecodedBatch:
    """Images of one batch that decoded, and the keys of those that did not, with why."""

    keys: list[str]
    images: np.ndarray | torch.Tensor  # uint8 (N, S, S, 3); a tensor when decoded on a device
    failures: list[tuple[str, UndecodableImage]]


def decoded_batches(
    source: Location,
    keys: Sequence[str],
    *,
    size: int,
    batch_size: int,
    concurrency: int = 64,
    workers: int | None = None,
    depth: int = 4,
    limits: ImageLimits | None = None,
    device: torch.device | str | None = None,
) -> Iterator[DecodedBatch]:
    """Batches of decoded images, fetched and decoded ahead of the consumer in two threads.

    Pillow releases the GIL while it decodes, so a thread pool decodes in parallel without the
    cost of shipping images between processes. On a CUDA ``device`` JPEGs are decoded there
    instead (:mod:`bincount.images.devicedecode`). No image is read past ``limits.max_bytes``.
    """
    on_device = device is not None and torch.device(device).type == "cuda"
    limits = limits or ImageLimits()
    windows = [list(keys[i : i + batch_size]) for i in range(0, len(keys), batch_size)]

    def fetched() -> Iterator[tuple[list[str], list[bytes | Exception]]]:
        for window in windows:
            yield (
                window,
                source.fetch_many(window, concurrency=concurrency, max_bytes=limits.max_bytes),
            )

    def decoded() -> Iterator[DecodedBatch]:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for window, payloads in Prefetched(fetched(), depth=depth, name="image-fetch"):
                if on_device:
                    results = decode_on_device(payloads, size, device, limits)
                else:
                    results = list(
                        pool.map(
                            decode_or_reason,
                            payloads,
                            [size] * len(payloads),
                            [limits] * len(payloads),
                        )
                    )
                yield _batch_of(window, results, size)

    return iter(Prefetched(decoded(), depth=depth, name="image-decode"))


def _batch_of(
    keys: list[str], results: list[np.ndarray | torch.Tensor | UndecodableImage], size: int
) -> DecodedBatch:
    pairs = list(zip(keys, results, strict=True))
    good = [(key, image) for key, image in pairs if not isinstance(image, UndecodableImage)]
    images = [image for _, image in good]
    return DecodedBatch(
        keys=[key for key, _ in good],
        images=(torch.stack(images) if isinstance(images[0], torch.Tensor) else np.stack(images))
        if good
        else np.zeros((0, size, size, 3), np.uint8),
        failures=[(key, fault) for key, fault in pairs if isinstance(fault, UndecodableImage)],
    )


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
    (``bin-images/1000`` scores ids starting with 1000).
    """
    check_plan_arguments(limit=limit, chunk_size=chunk_size)
    started_at = clock()
    orphans = SCORING.discard_uncommitted(output)
    folder, starting_with = _split_prefix(prefix)
    listing = source.list(folder, partitions=partitions, starting_with=starting_with)
    lowered = pc.utf8_lower(listing.column("key"))
    is_image = functools.reduce(pc.or_, (pc.ends_with(lowered, s) for s in IMAGE_SUFFIXES))
    images = listing.filter(is_image)
    uris = pa.array([source.uri(key) for key in images.column("key").to_pylist()], pa.string())
    fresh = pc.invert(pc.is_in(uris, value_set=scored_uris(output)))
    new = images.filter(fresh).column("key").to_pylist()
    already = images.num_rows - len(new)
    chunks = cut(new, chunk_size, limit=limit)
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


def discard_uncommitted_score_parts(output: Location) -> int:
    """Delete score-quarantine parts of chunks whose scores part never landed."""
    return SCORING.discard_uncommitted(output)


# -- one chunk ---------------------------------------------------------------------------------
@dataclass
class ChunkResult:
    """What scoring one chunk did; ``review`` is the top of its review list."""

    part: str
    scored: int
    quarantined: int
    discrepancies: int
    judged: int
    unknown_expected: int
    seconds: float
    model_seconds: float
    worker: str = ""
    part_key: str = ""


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
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChunkResult:
    """Score one chunk of image keys and commit it: quarantine part first, scores part last."""
    started = time.perf_counter()
    expected = expected_quantities(
        output, [image_id_from_image_key(k) for k in keys], source=source.url
    )
    scored_keys: list[str] = []
    probabilities: list[np.ndarray] = []
    failures: list[tuple[str, UndecodableImage]] = []
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
    ):
        failures.extend(batch.failures)
        if batch.keys:
            tick = time.perf_counter()
            probabilities.append(scorer.probabilities(batch.images))
            model_seconds += time.perf_counter() - tick
            scored_keys.extend(batch.keys)
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
    )
    part = chunk_part_name([source.uri(key) for key in keys])
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
) -> pa.Table:
    """Scores rows (pure: no I/O), with the contract's columns and the partition column; the
    night's ``review_rank`` and ``needs_review`` stay null until the queue is ranked."""
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
            "model_version": pa.array([model_version] * n, pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
        }
    )


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


def image_id_from_image_key(key: str) -> str:
    """``bin-images/01057.jpg`` → ``01057`` (a string: leading zeros are part of the id)."""
    return posixpath.splitext(posixpath.basename(key))[0]


def chunk_part_name(image_uris: Sequence[str]) -> str:
    """A name derived from the chunk's image URIs, so a retried chunk rewrites the same files
    and two sources holding the same keys (``bin-images/00001.jpg``) never share a part."""
    return part_name(image_uris)


# -- ad hoc -----------------------------------------------------------------------------------
def predict_images(
    scorer: Scorer, inputs: Sequence[str], *, read: Callable[[str], bytes]
) -> list[dict]:
    """Count the items in each input (a path or URL that ``read`` turns into bytes).

    One answer per input, in order: the count, per-count probabilities, confidence and model
    version, or the error that stopped it (an input that cannot be read or decoded).
    """
    answers: list[dict] = [{"input": name} for name in inputs]
    decoded: list[tuple[int, np.ndarray]] = []
    for position, name in enumerate(inputs):
        try:
            decoded.append((position, decode_image(read(name), scorer.image_size)))
        except (OSError, ValueError) as error:  # missing, forbidden, undecodable
            answers[position]["error"] = f"{type(error).__name__}: {error}"
    if decoded:
        probabilities = scorer.probabilities(np.stack([image for _, image in decoded]))
        counts = scorer.counts(probabilities)
        for (position, _), row, count in zip(decoded, probabilities, counts, strict=True):
            answers[position].update(
                count=int(count),
                probabilities=[round(float(p), 6) for p in row],
                confidence=round(float(row[count]), 6),
                model_version=scorer.version,
            )
    return answers


# -- the run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScoringSummary:
    """What one scoring run did, for logs, the summary artifact and the CLI; ``review`` is the
    top of the night's queue, each row with a link and a thumbnail of its photo."""

    source: str
    output: str
    model_version: str
    listed: int
    not_images: int
    already_scored: int
    new: int
    scored: int
    quarantined: int
    discrepancies: int
    judged: int
    needs_review: int
    unknown_expected: int
    seconds: float
    model_seconds: float
    parts: list[str]
    workers: list[str]
    queue: dict
    review: list[dict]
    discarded_orphan_parts: int = 0

    @property
    def images_per_second(self) -> float:
        return (self.scored + self.quarantined) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        # The thumbnails are for the artifact; a JSON summary names the photos by link.
        review = [{k: v for k, v in row.items() if k != "thumbnail"} for row in self.review]
        return {
            **asdict(self),
            "review": review,
            "images_per_second": round(self.images_per_second, 1),
        }

    def to_markdown(self) -> str:
        policy = self.queue.get("policy", {})
        measures = [
            ("images listed", self.listed),
            ("already scored (skipped)", self.already_scored),
            ("scored now", self.scored),
            ("undecodable (quarantined)", self.quarantined),
            ("no metadata ingested (record unknown)", self.unknown_expected),
            ("ranked tonight (records the model can judge)", self.queue.get("judged", 0)),
            ("carried over from a run stopped before ranking", self.queue.get("carried_over", 0)),
            ("review budget", self.queue.get("budget", 0)),
            ("flagged for review", self.needs_review),
            ("predicted count differs from the record (not the queue)", self.discrepancies),
            ("images/s", f"{self.images_per_second:.1f}"),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        lines = [
            f"# Scoring with model {self.model_version}",
            "",
            f"Images from `{self.source}`, scores in `{self.output}/scores/`, the queue in "
            f"`{self.output}/review_queue/`.",
            "",
            "| measure | value |",
            "|---|---:|",
            *(
                f"| {name} | {value:,} |" if isinstance(value, int) else f"| {name} | {value} |"
                for name, value in measures
            ),
            "",
            f"## Review queue: the top {len(self.review)} of {self.needs_review:,}",
            "",
            f"Policy: at most {policy.get('budget_percent', '?')}% of the night's judged bins"
            + (
                f" and at most {policy['budget_count']}"
                if policy.get("budget_count") is not None
                else ""
            )
            + f", each with a recorded count the model gives at most "
            f"{100 * policy.get('max_p_recorded', 0):g}% (`p_recorded`). Ranked from the least "
            "likely record.",
            "",
        ]
        if self.review:
            lines += [
                "| rank | photo | bin | recorded | predicted | p_recorded |",
                "|---:|---|---|---:|---:|---:|",
            ]
            lines += [
                f"| {row['review_rank']} | "
                + (f"![{row['image_id']}]({row['thumbnail']})" if row.get("thumbnail") else "-")
                + f" | [{row['image_id']}]({row['link']}) | {row['expected_quantity']} | "
                f"{row['predicted_count']}{'+' if row['predicted_overflow'] else ''} | "
                f"{probability_text(row['p_recorded'])} |"
                for row in self.review
            ]
        else:
            lines.append("Nothing to review tonight: no record is unlikely enough.")
        return "\n".join(lines) + "\n"


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


def summarize(
    plan: ScoringPlan,
    source: Location | Sequence[Location],
    output: Location,
    results: Sequence[ChunkResult],
    queue: NightQueue,
    seconds: float,
    *,
    limits: ImageLimits | None = None,
) -> ScoringSummary:
    """One run's summary from its plan, the results of its chunks and the night's queue
    (``source``: the location, or locations, its images came from)."""
    return ScoringSummary(
        source=plan.source,
        output=output.uri(),
        model_version=plan.model_version,
        listed=plan.listed,
        not_images=plan.not_images,
        already_scored=plan.already_scored,
        new=plan.new,
        **totals(
            results,
            "scored",
            "quarantined",
            "discrepancies",
            "judged",
            "unknown_expected",
            "model_seconds",
        ),
        needs_review=queue.flagged,
        seconds=seconds,
        parts=[r.part for r in results],
        workers=sorted({r.worker for r in results}),
        queue={k: v for k, v in queue.as_dict().items() if k != "top"},
        review=with_thumbnails(source, queue.top, limits=limits),
        discarded_orphan_parts=plan.discarded_orphan_parts,
    )


def score_images(
    source: Location,
    output: Location,
    *,
    model: str = "champion",
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
) -> ScoringSummary:
    """Score every image under ``prefix`` not scored yet and rank the night's review queue
    (the whole run, in one process)."""
    started = time.perf_counter()
    scorer = load_scorer(output, model, device=device)
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
    seconds = time.perf_counter() - started
    return summarize(plan, source, output, results, queue, seconds, limits=limits)
