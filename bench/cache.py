"""The 224 px image cache build, measured: images/s decoding and writing from a local folder.

A folder of bin photos in ABID's layout (``bin-images/<id>.jpg`` + ``metadata/<id>.json``: the
real sample at ``../shared/abid/sample``, a carried subset in ``.abid_carry/`` (made by
``bench/carry_abid.py``), or ``--synthetic N`` synthetic bins) becomes a local bucket in which
each photo appears under ``--copies`` keys (a hard link, or a symlink where the file system
refuses one, with its metadata copied under the new id), so a small set stands for many images
and the cache decodes each copy as an image of its own. Ingest, validate and manifest (policy
``hard``: every count) run once, untimed; where Great Expectations is absent (the GPU machine),
``--manifest direct`` reads the manifest's rows straight from the metadata instead. Then
``build_image_cache`` alone is timed for each ``--workers`` value, each time into a fresh copy
of that output (the cache built from scratch), the order alternating between ``--rounds``.

Every photo is read once before timing, so each build reads from the page cache: the figures
exclude S3 fetching (and disk reads). The fetch side is given from paper.

    python bench/cache.py                                   # ../shared/abid/sample, workers 1,N
    python bench/cache.py --photos .abid_carry --copies 8 --workers 1,8,16
    python bench/cache.py --synthetic 2000 --image-size 224
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from bincount.core.sources import fetch_uris, open_sources
from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.images.cache import _write_npy, build_image_cache, cache_folder, cache_protocol
from bincount.images.cachebuild import ShardBlock
from bincount.synth import synthesize
from bincount.testing.pipeline import defaults, run_pipeline

REPO = Path(__file__).resolve().parents[1]
ABID_SAMPLE = REPO.parent / "shared" / "abid" / "sample"
CARRY = REPO / ".abid_carry"
# ABID's object count: ids 1..535,234 (bench/ingest.py's ABID_LAST_ID; ../shared/abid/README.md
# does not state it, docs/training/real-data.md says "about 535,000 bins").
ABID_IMAGES = 535_234
DEFAULT_SYNTHETIC = 1000
# The only measured object rates in bench/README.md: the rehearsal's metadata GETs (~2 KB each)
# against moto on 2 cores, quiet and loaded. moto bounds them, not S3.
REHEARSAL_OBJECTS_PER_S = {"quiet": 348, "loaded": 275}
S3_LATENCY_S = 0.030  # the ingest bench's S3 seen from outside its region


@dataclass(frozen=True)
class PhotoStats:
    photos: int
    mean_width: float
    mean_height: float
    mean_pixels: float
    mean_kb: float
    progressive: int
    unreadable: int


@dataclass(frozen=True)
class Row:
    workers: int
    images: int
    seconds: float
    cpu_s: float
    main_cpu_s: float
    bytes_written: int
    quarantined: int
    reasons: tuple[str, ...]

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_s / self.images

    @property
    def main_ms_per_image(self) -> float:
        return 1000 * self.main_cpu_s / self.images

    @property
    def mb_per_image(self) -> float:
        return self.bytes_written / self.images / 1e6

    @property
    def bucket_minutes(self) -> float:
        return ABID_IMAGES / self.images_per_s / 60


# -- the bucket ----------------------------------------------------------------------------------
def resolve_photos(photos: str | None, synthetic: int | None, scratch: Path) -> tuple[Path, str]:
    """The photo folder and how to name it: ``--photos``, else ``--synthetic N`` bins, else the
    real sample, else ``.abid_carry/``, else ``DEFAULT_SYNTHETIC`` synthetic bins."""
    if photos is not None and synthetic is not None:
        raise SystemExit("bench/cache.py: give --photos or --synthetic, not both")
    if photos is None and synthetic is None:
        for found in (ABID_SAMPLE, CARRY):
            if (found / "metadata").is_dir():
                photos = str(found)
                break
        else:
            synthetic = DEFAULT_SYNTHETIC
    if synthetic is not None:
        if synthetic < 1:
            raise SystemExit(f"bench/cache.py: expected --synthetic >= 1, but got {synthetic}")
        folder = scratch / "synthetic"
        synthesize(Location(str(folder)), bins=synthetic, seed=0)
        return folder, f"{synthetic} synthetic bins (bincount.synth, seed 0)"
    folder = Path(photos).resolve()
    if not (folder / "metadata").is_dir() or not (folder / "bin-images").is_dir():
        raise SystemExit(
            f"bench/cache.py: expected a folder in ABID's layout (bin-images/, metadata/), "
            f"but {folder} has none"
        )
    return folder, str(folder)


def photo_pairs(photos: Path) -> list[tuple[str, Path, Path]]:
    """``(id, metadata, image)`` for each metadata object whose photo is present."""
    pairs = []
    for meta in sorted((photos / "metadata").glob("*.json")):
        image_id = meta.stem
        document = json.loads(meta.read_bytes())
        image = photos / "bin-images" / document.get("image_fname", f"{image_id}.jpg")
        if image.is_file():
            pairs.append((image_id, meta, image))
    return pairs


def make_bucket(photos: Path, bucket: Path, copies: int) -> int:
    """Each photo under ``copies`` ids in ``bucket``: copy 0 keeps its id, copy k is
    ``<id>-c<k>``; the photo linked (no bytes copied), its metadata rewritten with the new
    name. Returns the images placed."""
    if copies < 1:
        raise SystemExit(f"bench/cache.py: expected --copies >= 1, but got {copies}")
    (bucket / "bin-images").mkdir(parents=True)
    (bucket / "metadata").mkdir()
    placed = 0
    for image_id, meta, image in photo_pairs(photos):
        document = json.loads(meta.read_bytes())
        for k in range(copies):
            new_id = image_id if k == 0 else f"{image_id}-c{k}"
            if "image_fname" in document:
                document["image_fname"] = f"{new_id}.jpg"
            (bucket / "metadata" / f"{new_id}.json").write_text(json.dumps(document))
            _link(image, bucket / "bin-images" / f"{new_id}.jpg")
            placed += 1
    return placed


def _link(target: Path, link: Path) -> None:
    try:
        os.link(target, link)
    except OSError:  # another file system, or protected_hardlinks on a file not ours
        link.symlink_to(target.resolve())


def photo_stats(photos: Path) -> PhotoStats:
    """The source photos' mean size; reading them all also puts them in the page cache."""
    widths, heights, sizes, progressive, unreadable = [], [], [], 0, 0
    for _, _, image in photo_pairs(photos):
        payload = image.read_bytes()
        try:
            with Image.open(io.BytesIO(payload)) as opened:
                widths.append(opened.width)
                heights.append(opened.height)
                info = opened.info
                progressive += bool(info.get("progressive") or info.get("progression"))
        except (OSError, ValueError):  # the cache quarantines it; the mean leaves it out
            unreadable += 1
            continue
        sizes.append(len(payload))
    if not sizes:
        raise SystemExit(f"bench/cache.py: no photo with its metadata under {photos}")
    return PhotoStats(
        photos=len(sizes),
        mean_width=statistics.fmean(widths),
        mean_height=statistics.fmean(heights),
        mean_pixels=statistics.fmean(w * h for w, h in zip(widths, heights, strict=True)),
        mean_kb=statistics.fmean(sizes) / 1024,
        progressive=progressive,
        unreadable=unreadable,
    )


# -- the timed build -----------------------------------------------------------------------------
def _cpu() -> tuple[float, float]:
    """(this process, its reaped children): the pool's processes are joined when the build
    returns, so their CPU time is in RUSAGE_CHILDREN by then."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class Manifest:
    """What the cache build reads of a manifest: its version, rows and sources."""

    version: str
    rows: pa.Table
    sources: tuple[str, ...]
    how: str  # how it was made, for the report


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def prepare_manifest(bucket: Path, prepared: Path, how: str) -> Manifest:
    """The manifest, made untimed: by the pipeline (ingest, validate, manifest; policy
    ``hard``), or, with ``direct`` (where Great Expectations is absent, as on the GPU machine),
    straight from the metadata with every image in the train split: the same rows for the
    cache build, which reads only the image's URI, id, label and split."""
    source = Location(str(bucket))
    if how == "auto":
        how = "pipeline" if _importable("great_expectations") else "direct"
    if how == "pipeline":
        run = run_pipeline(source, Location(str(prepared)), policy="hard", until="manifest")
        rows, details = load_manifest(Location(str(prepared)), run.manifest_version)
        return Manifest(
            run.manifest_version, rows, tuple(details.sources), "ingest+validate+manifest"
        )
    prepared.mkdir(parents=True, exist_ok=True)
    ids, uris, labels = [], [], []
    for meta in sorted((bucket / "metadata").glob("*.json")):
        document = json.loads(meta.read_bytes())
        ids.append(meta.stem)
        uris.append(source.uri(f"bin-images/{document.get('image_fname', meta.stem + '.jpg')}"))
        labels.append(int(document["EXPECTED_QUANTITY"]))
    rows = pa.table(
        {
            "image_id": pa.array(ids, pa.string()),
            "image_uri": pa.array(uris, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "split": pa.array(["train"] * len(ids), pa.string()),
        }
    )
    return Manifest("direct", rows, (), "read from the metadata (no validation)")


def time_build(
    bucket: Path,
    prepared: Path,
    fresh: Path,
    manifest: Manifest,
    *,
    workers: int,
    size: int,
    shard_size: int,
) -> Row:
    """``build_image_cache`` alone, into a fresh copy of the output holding the manifest."""
    shutil.copytree(prepared, fresh)
    output = Location(str(fresh))
    version, rows = manifest.version, manifest.rows
    settings = defaults()
    own0, children0 = _cpu()
    started = time.perf_counter()
    summary = build_image_cache(
        Location(str(bucket)),
        output,
        rows,
        manifest_version=version,
        size=size,
        shard_size=shard_size,
        concurrency=settings.max_concurrency,
        workers=workers,
        limits=settings.image_limits(),
        sources=manifest.sources,
    )
    seconds = time.perf_counter() - started
    own1, children1 = _cpu()
    if not summary.created:
        raise RuntimeError(f"Expected a cache built from scratch, but {summary.uri} was found")
    folder = fresh / cache_folder(version, size)
    written = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return Row(
        workers=workers,
        images=summary.images,
        seconds=seconds,
        cpu_s=(own1 - own0) + (children1 - children0),
        main_cpu_s=own1 - own0,
        bytes_written=written,
        quarantined=summary.quarantined,
        reasons=quarantine_reasons(output, version, size) if summary.quarantined else (),
    )


@dataclass(frozen=True)
class Serial:
    """The build's per-shard steps outside the decoding processes, each in a thread of the
    building process and overlapping another shard's decoding: fetching a shard, and writing
    its ``.npy`` from the shard's shared-memory block."""

    images: int
    fetch_s: float
    write_s: float

    @property
    def fetch_ms(self) -> float:
        return 1000 * self.fetch_s / self.images

    @property
    def write_ms(self) -> float:
        return 1000 * self.write_s / self.images


def time_serial(
    bucket: Path, prepared: Path, manifest: Manifest, size: int, shard_size: int, repeats: int = 3
) -> Serial:
    """One shard's fetch and write, with the cache's own functions, timed apart from decoding
    (each step's median of ``repeats``): the photos fetched as the build fetches them, then
    (random pixels standing in) a shard block written as the build's writer thread writes it
    (``np.save`` into bytes, written and fsynced)."""
    output = Location(str(prepared))
    uris = manifest.rows.sort_by("image_id").column("image_uri").to_pylist()[:shard_size]
    settings = defaults()
    rng = np.random.default_rng(0)
    block = ShardBlock(len(uris), size)
    try:
        pixels = block.pixels()
        pixels[:] = rng.integers(0, 256, pixels.shape, np.uint8)
        fetch, write = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            fetch_uris(
                open_sources(Location(str(bucket)), list(manifest.sources)),
                uris,
                concurrency=settings.max_concurrency,
                max_bytes=settings.image_limits().max_bytes,
            )
            fetched = time.perf_counter()
            _write_npy(output, "serial-probe/shard.npy", pixels)
            written = time.perf_counter()
            shutil.rmtree(prepared / "serial-probe")
            fetch.append(fetched - started)
            write.append(written - fetched)
        del pixels
    finally:
        block.release()
    median = statistics.median
    return Serial(len(uris), median(fetch), median(write))


def quarantine_reasons(output: Location, version: str, size: int) -> tuple[str, ...]:
    protocol = cache_protocol(version, size)
    reasons = []
    for key in sorted(protocol.quarantine.keys(output).values()):
        for row in output.read_parquet(key).to_pylist():
            reasons.append(f"{row['image_id']}: {row['reason_code']}: {row['reason']}")
    return tuple(reasons)


def median_row(rows: list[Row]) -> Row:
    """The round with the median seconds (an odd count) or the faster middle one."""
    ordered = sorted(rows, key=lambda row: row.seconds)
    return ordered[(len(ordered) - 1) // 2]


# -- the report ----------------------------------------------------------------------------------
HEADER = (
    f"{'workers':>7}  {'images':>7}  {'seconds':>8}  {'images/s':>8}  {'per worker':>10}  "
    f"{'scaling':>7}  {'CPU ms/img':>10}  {'main ms/img':>11}  {'MB/img':>6}  "
    f"{'quarantined':>11}  {'ABID bucket':>11}"
)


def format_row(row: Row, single: Row | None) -> str:
    scaling = f"{row.images_per_s / single.images_per_s:.2f}x" if single else "-"
    return (
        f"{row.workers:>7}  {row.images:>7}  {row.seconds:>8.3f}  {row.images_per_s:>8.1f}  "
        f"{row.images_per_s / row.workers:>10.1f}  {scaling:>7}  {row.cpu_ms_per_image:>10.2f}  "
        f"{row.main_ms_per_image:>11.2f}  {row.mb_per_image:>6.3f}  {row.quarantined:>11}  "
        f"{row.bucket_minutes:>7.1f} min"
    )


def report(rows: list[Row], stats: PhotoStats, serial: Serial, *, rounds: int) -> list[str]:
    single = next((row for row in rows if row.workers == 1), None)
    lines = [HEADER, "-" * len(HEADER)]
    lines += [format_row(row, single) for row in rows]
    lines.append("")
    lines.append(
        f"(median of {rounds} round(s) per row; 'scaling' is images/s against workers=1; "
        "'CPU ms/img' counts the building process and its decoding processes, 'main ms/img' "
        "the building process alone: fetch threads, pickling payloads to the pool, "
        f"shard writes; 'ABID bucket' is {ABID_IMAGES:,} images at that rate)"
    )
    for row in rows:
        for reason in row.reasons:
            lines.append(f"quarantined (workers={row.workers}): {reason}")
    decode_ms = statistics.median(row.cpu_ms_per_image - row.main_ms_per_image for row in rows)
    most = max(rows, key=lambda row: row.workers)
    main_ms = most.main_ms_per_image
    lines.append(
        f"serial per shard (each overlaps another shard's decoding, in its own thread): fetch "
        f"{serial.fetch_s:.2f} s, np.save, write and fsync {serial.write_s:.2f} s for "
        f"{serial.images} images ({serial.fetch_ms:.2f} + {serial.write_ms:.2f} ms per image, "
        f"medians of 3); decoding {decode_ms:.2f} ms of CPU per image in the pool."
    )
    lines.append(
        f"the building process (fetch threads, payloads pickled to the pool, the writer "
        f"thread): {main_ms:.2f} ms of its CPU per image at workers={most.workers}, its threads "
        f"sharing one GIL: about {1000 / main_ms:,.0f} images/s at most, whatever the number of "
        "decoding processes"
    )
    slowest = max(serial.fetch_ms, serial.write_ms, main_ms)
    lines.append(
        "On paper, the slowest of decoding / N, the fetch, the write and the building process "
        "(an estimate: pool start left out, the probe's timings noisy): "
        + ", ".join(
            f"N={n}: {1000 / max(decode_ms / n, slowest):,.0f} images/s"
            for n in sorted({1, os.cpu_count() or 1, 16})
        )
    )
    best = max(rows, key=lambda row: row.images_per_s)
    mb_s = best.images_per_s * stats.mean_kb / 1024
    latency_bound = defaults().max_concurrency / S3_LATENCY_S
    lines += [
        "",
        "Read from a local folder (page cache): S3 fetching is excluded. Fetch side, from paper:",
        f"- at the best rate, {best.images_per_s:,.0f} images/s, the cache build would need "
        f"{mb_s:,.1f} MB/s of photos ({stats.mean_kb:.1f} KB each) from the bucket;",
        f"- latency-bound ceiling: {defaults().max_concurrency} GETs in flight "
        f"(max_concurrency) / {S3_LATENCY_S * 1000:.0f} ms = {latency_bound:,.0f} objects/s, "
        f"{ABID_IMAGES / latency_bound / 60:.1f} min for the bucket (unmeasured against S3);",
        "- the only measured object rates (bench/README.md, rehearsal.py: ~2 KB metadata GETs "
        f"against moto on 2 cores) are {REHEARSAL_OBJECTS_PER_S['quiet']} objects/s quiet and "
        f"{REHEARSAL_OBJECTS_PER_S['loaded']} loaded, bound by moto, not S3, and"
        f" for objects ~{stats.mean_kb / 2:.0f}x smaller than these photos: at "
        f"{REHEARSAL_OBJECTS_PER_S['quiet']}/s the "
        f"bucket would take {ABID_IMAGES / REHEARSAL_OBJECTS_PER_S['quiet'] / 3600:.1f} h (not an "
        "estimate: no photo fetch from S3 has been measured).",
    ]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", help="a folder in ABID's layout (bin-images/, metadata/)")
    parser.add_argument("--synthetic", type=int, help="synthetic bins instead of photos")
    parser.add_argument("--copies", type=int, default=1, help="keys per photo (default 1)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument(
        "--workers",
        default=f"1,{os.cpu_count() or 1}",
        help="comma list of decoding processes (default 1 and os.cpu_count())",
    )
    parser.add_argument("--shard-size", type=int, default=defaults().cache_shard_size)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (default 1)")
    parser.add_argument("--keep", help="leave the last build's output folder here")
    parser.add_argument(
        "--manifest",
        choices=("auto", "pipeline", "direct"),
        default="auto",
        help="how the untimed manifest is made: the pipeline, or read straight from the metadata "
        "(auto: the pipeline where Great Expectations is installed)",
    )
    return parser.parse_args(argv)


def parse_workers(text: str) -> list[int]:
    try:
        workers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(
            f"bench/cache.py: expected --workers like 1,2,16, but got {text!r}"
        ) from None
    if not workers or min(workers) < 1:
        raise SystemExit(f"bench/cache.py: expected --workers of at least 1, but got {text!r}")
    return list(dict.fromkeys(workers))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = parse_workers(args.workers)
    if args.rounds < 1:
        raise SystemExit(f"bench/cache.py: expected --rounds >= 1, but got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        scratch = Path(tmp)
        photos, described = resolve_photos(args.photos, args.synthetic, scratch)
        stats = photo_stats(photos)
        bucket = scratch / "bucket"
        images = make_bucket(photos, bucket, args.copies)
        prepared = scratch / "prepared"
        started = time.perf_counter()
        manifest = prepare_manifest(bucket, prepared, args.manifest)
        print(
            f"source: {described}: {stats.photos} photos, mean {stats.mean_width:.0f} x "
            f"{stats.mean_height:.0f} px, {stats.mean_pixels / 1e6:.3f} Mpx, "
            f"{stats.mean_kb:.1f} KB, {stats.progressive} progressive, "
            f"{stats.unreadable} unreadable"
        )
        print(
            f"bucket: {images} images ({args.copies} key(s) per photo), manifest "
            f"{manifest.version} with {manifest.rows.num_rows} rows "
            f"({manifest.how}, untimed: {time.perf_counter() - started:.1f} s); "
            f"{args.image_size} px, shards of {args.shard_size}, {os.cpu_count()} CPUs here"
        )
        timed: dict[int, list[Row]] = {w: [] for w in workers}
        schedule = [
            (round_, w)
            for round_ in range(args.rounds)
            for w in (workers if round_ % 2 == 0 else workers[::-1])
        ]
        for n, (round_, w) in enumerate(schedule):
            fresh = scratch / f"build-{round_}-{w}"
            row = time_build(
                bucket,
                prepared,
                fresh,
                manifest,
                workers=w,
                size=args.image_size,
                shard_size=args.shard_size,
            )
            timed[w].append(row)
            if args.keep and n == len(schedule) - 1:
                shutil.copytree(fresh, args.keep, dirs_exist_ok=True)
            shutil.rmtree(fresh)
        serial = time_serial(bucket, prepared, manifest, args.image_size, args.shard_size)
        print()
        medians = [median_row(timed[w]) for w in workers]
        print("\n".join(report(medians, stats, serial, rounds=args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
