"""Writing synthetic bins into a bucket: the public entry point, its workers, the truth table."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from bincount.core.progress import Progress
from bincount.core.storage import Location
from bincount.synth.defects import DEFECT_KINDS, CameraFault, inject_defect
from bincount.synth.ids import plan_ids
from bincount.synth.labels import bin_count
from bincount.synth.metadata import encode_metadata, metadata_document
from bincount.synth.products import catalogue, pick_lines
from bincount.synth.render import render_bin
from bincount.synth.streams import _CONTENT, _seeds
from bincount.synth.textures import texture_pools

IMAGE_PREFIX = "bin-images"
METADATA_PREFIX = "metadata"

MAX_COUNT_LIMIT = 50  # beyond this the items get too small to be told apart at 128 px
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SynthSummary:
    """What one ``synthesize`` call wrote."""

    dest: str
    bins: int
    ids: tuple[str, ...]
    label_histogram: dict[int, int]  # true item count (what the image shows) -> bins
    defects: dict[str, str]  # bin id -> one of DEFECT_KINDS
    seconds: float
    truth: str | None = None  # where the truth table of these bins was written

    @property
    def first_id(self) -> str | None:
        return self.ids[0] if self.ids else None

    @property
    def last_id(self) -> str | None:
        return self.ids[-1] if self.ids else None


def synthesize(
    dest: Location,
    *,
    bins: int,
    seed: int,
    max_count: int = MAX_COUNT_LIMIT,
    append: bool = False,
    defect_rate: float = 0.0,
    mismatch_rate: float = 0.0,
    truth: Location | None = None,
    workers: int | None = None,
    exposure: float = 1.0,
    camera: CameraFault | None = None,
) -> SynthSummary:
    """Write ``bins`` synthetic bins (image + metadata) into ``dest`` and summarise them.

    ``defect_rate`` injects every kind of :data:`DEFECT_KINDS`; ``mismatch_rate`` adds, among
    the other bins, records that disagree with their photo (``record_mismatch``). ``truth``,
    a place outside the bucket, receives :func:`truth_table` of the bins written, so quality
    can be measured against what the photos really show while no flow can read it.
    ``exposure`` below 1 darkens every photo (a camera with less light: a drift to detect);
    ``camera`` blurs or resizes every photo (a lens out of focus, another camera).
    """
    _validate(bins=bins, seed=seed, max_count=max_count, defect_rate=defect_rate, workers=workers)
    if not 0.0 <= mismatch_rate <= 1.0:
        raise ValueError(f"Expected mismatch_rate in [0, 1], but got {mismatch_rate!r}")
    if not 0.0 < exposure <= 4.0:
        raise ValueError(f"Expected exposure in (0, 4], but got {exposure!r}")
    if truth is not None and truth.uri().startswith(dest.uri() + "/"):
        raise ValueError(
            f"Expected the truth outside the bucket, but got {truth.uri()} inside {dest.uri()}"
        )
    started = time.perf_counter()
    existing = existing_ids(dest)
    if existing and not append:
        raise ValueError(
            f"Expected an empty destination, but {dest.uri()} already holds {len(existing)} bins"
            " under metadata/ or bin-images/; use append=True to add new bins"
        )
    plan = plan_ids(existing, bins=bins)
    job = _Job(
        seed=seed,
        max_count=max_count,
        defect_rate=defect_rate,
        mismatch_rate=mismatch_rate,
        exposure=exposure,
        camera=camera,
    )
    records = _run(dest, job, plan, workers=workers or os.cpu_count() or 1)
    truth_uri = None
    if truth is not None and records:
        truth_key = f"part-{seed}-{records[0].ordinal:06d}.parquet"
        truth.write_parquet(truth_key, truth_table(records, seed=seed))
        truth_uri = truth.uri(truth_key)
    return SynthSummary(
        dest=dest.uri(),
        bins=len(records),
        ids=tuple(record.bin_id for record in records),
        label_histogram=dict(sorted(Counter(record.count for record in records).items())),
        defects={r.bin_id: r.defect for r in records if r.defect is not None},
        seconds=round(time.perf_counter() - started, 3),
        truth=truth_uri,
    )


def default_truth(dest: str) -> str | None:
    """Where the truth of a local bucket goes by default: a folder beside it (``B.truth``).
    None for an object store, whose bucket has no "beside": name a place explicitly there."""
    if "://" in dest and not dest.startswith("file://"):
        return None
    return dest.rstrip("/") + ".truth"


def truth_table(records: Sequence[BinRecord], *, seed: int) -> pa.Table:
    """What each bin's photo really shows beside what its record says, one row per bin."""
    return pa.table(
        {
            "image_id": pa.array([r.bin_id for r in records], pa.string()),
            "true_count": pa.array([r.count for r in records], pa.int32()),
            "recorded_count": pa.array([r.recorded for r in records], pa.int32()),
            "defect": pa.array([r.defect for r in records], pa.string()),
            "has_image": pa.array([r.defect != "missing_image" for r in records], pa.bool_()),
            "seed": pa.array([seed] * len(records), pa.int64()),
            "ordinal": pa.array([r.ordinal for r in records], pa.int64()),
        }
    )


def _validate(
    *, bins: int, seed: int, max_count: int, defect_rate: float, workers: int | None
) -> None:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"Expected bins to be a positive integer, but got {bins!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"Expected seed to be a non-negative integer, but got {seed!r}")
    if not isinstance(max_count, int) or not 0 <= max_count <= MAX_COUNT_LIMIT:
        raise ValueError(
            f"Expected max_count to be an integer in 0..{MAX_COUNT_LIMIT}, but got {max_count!r}"
        )
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"Expected defect_rate in [0, 1], but got {defect_rate!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"Expected workers to be a positive integer or None, but got {workers!r}")


@dataclass(frozen=True)
class _Job:
    seed: int
    max_count: int
    defect_rate: float
    mismatch_rate: float = 0.0
    exposure: float = 1.0
    camera: CameraFault | None = None


@dataclass(frozen=True)
class BinRecord:
    """One written bin: its id, the count its image shows, the count its record says (None when
    the record has no integer count), and the defect injected, if any."""

    bin_id: str
    count: int
    defect: str | None
    recorded: int | None = None
    ordinal: int = 0


def _run(
    dest: Location, job: _Job, plan: list[tuple[int, str]], *, workers: int
) -> list[BinRecord]:
    batch = max(8, min(100, math.ceil(len(plan) / (workers * 4))))
    batches = [plan[start : start + batch] for start in range(0, len(plan), batch)]
    progress = Progress(logger, f"synthesized bins in {dest.uri()}", len(plan))
    records: list[BinRecord] = []
    if workers == 1 or len(batches) == 1:
        for part in batches:
            records += _write_batch(dest, job, part)
            progress.advance(len(part))
        return records
    # spawn, not fork: the caller may be a threaded process (a Prefect worker, an event loop).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(batches)), mp_context=context) as pool:
        for part in pool.map(_write_batch, [dest] * len(batches), [job] * len(batches), batches):
            records += part
            progress.advance(len(part))
    return records


def _write_batch(dest: Location, job: _Job, part: Sequence[tuple[int, str]]) -> list[BinRecord]:
    records = []
    for ordinal, bin_id in part:
        record, image, metadata = make_bin(
            seed=job.seed,
            ordinal=ordinal,
            bin_id=bin_id,
            max_count=job.max_count,
            defect_rate=job.defect_rate,
            mismatch_rate=job.mismatch_rate,
            exposure=job.exposure,
            camera=job.camera,
        )
        # Image first: a reader that sees the metadata object finds its image already there.
        if image is not None:
            dest.write_bytes(f"{IMAGE_PREFIX}/{bin_id}.jpg", image)
        dest.write_bytes(f"{METADATA_PREFIX}/{bin_id}.json", metadata)
        records.append(record)
    return records


def make_bin(
    *,
    seed: int,
    ordinal: int,
    bin_id: str,
    max_count: int,
    defect_rate: float = 0.0,
    mismatch_rate: float = 0.0,
    exposure: float = 1.0,
    camera: CameraFault | None = None,
) -> tuple[BinRecord, bytes | None, bytes]:
    """One bin's record, JPEG bytes (None when the image is withheld) and metadata bytes."""
    content_rng, scene_rng, defect_rng, mismatch_rng = (
        np.random.default_rng(s) for s in _seeds(seed, ordinal)[_CONTENT:]
    )
    count = bin_count(seed=seed, ordinal=ordinal, max_count=max_count)
    products = catalogue(seed)
    lines = pick_lines(content_rng, count=count, catalogue=products)
    document = metadata_document(lines, bin_id=bin_id)
    image = render_bin(scene_rng, lines, pools=texture_pools(seed), exposure=exposure).jpeg
    if camera is not None:
        image = camera.apply(image)
    defect, rng = None, defect_rng
    if defect_rate > 0 and defect_rng.random() < defect_rate:
        defect = DEFECT_KINDS[int(defect_rng.integers(len(DEFECT_KINDS)))]
    elif mismatch_rate > 0 and mismatch_rng.random() < mismatch_rate:
        defect, rng = "record_mismatch", mismatch_rng
    metadata = encode_metadata(document)
    if defect is not None:
        document, metadata, image = inject_defect(rng, defect, document, image, catalogue=products)
    recorded = None if defect == "truncated_json" else document.get("EXPECTED_QUANTITY")
    record = BinRecord(
        bin_id=bin_id,
        count=count,
        defect=defect,
        recorded=recorded if type(recorded) is int else None,
        ordinal=ordinal,
    )
    return record, image, metadata


def existing_ids(dest: Location) -> set[str]:
    """Ids that already have a metadata object or an image in ``dest``."""
    found: set[str] = set()
    for prefix, suffix in ((METADATA_PREFIX, ".json"), (IMAGE_PREFIX, ".jpg")):
        for key in dest.list(prefix).column("key").to_pylist():
            name = key.rsplit("/", 1)[-1]
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
    return found
