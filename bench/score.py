"""Scoring throughput end to end against the same model fed pre-decoded tensors.

End to end is one scoring run as ``bincount score`` does it, minus loading the model from the
registry: ``plan_scoring`` (listing, the scores watermark), ``score_chunk`` for every chunk
(fetch, decode in a thread pool ahead of the model, the model, the Parquet scores part), then the
night's review queue and the summary with its thumbnails, from a local synthetic bucket into a
fresh output folder that holds the ingested metadata, timed whole. The bare model runs the same
``predict_batch`` call on the same images, decoded and normalised in memory ahead of time, in the
same batches. The two sides alternate A/B/A/B so that machine noise hits both alike; the median
of the repetitions is reported for both. Scoring must keep the model busy: goal ratio
(end-to-end images/s / bare images/s) >= 0.85.

    python bench/score.py [--archs resnet18,mobilenet_v3_small] [--image-size 128]
        [--batch-size 64] [--images 768] [--rounds 3] [--no-flips] [--check]
    python bench/score.py --device cuda --archs resnet34,resnet50 --image-size 224 \
        --batch-size 256 --images 4096
    python bench/score.py --photos ../shared/abid/sample --copies 2   # real ABID photos

On a GPU (``--device cuda``) the end-to-end side decodes JPEGs there (nvJPEG through
``bincount.images.devicedecode``) and runs the model in bf16; the bare side's batches are put on the
device before the clock starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bincount.core.storage import Location
from bincount.data.ingest import ingest_metadata
from bincount.images.decode import decode_image
from bincount.model.device import Runtime, resolve_runtime
from bincount.model.inputs import to_model_input
from bincount.model.networks import CountingModel
from bincount.model.prediction import predict_batch
from bincount.nightly.plan import plan_scoring
from bincount.nightly.scorer import Scorer
from bincount.nightly.scoring import score_images
from bincount.synth import synthesize
from bincount.testing.pipeline import defaults

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its photo buckets
from cache import make_bucket

GOAL_RATIO = 0.85
PREFIX = "bin-images/"
NOISY = 0.10  # other processes' share of the CPUs above which the numbers are not to be trusted


# -- what both sides work on -----------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    """The bucket, an output folder holding only the ingested metadata (copied fresh for every
    end-to-end run), and the same images decoded and normalised in memory, batch by batch."""

    workdir: str
    source: Location
    ingested: str
    batches: list[torch.Tensor]
    decode_seconds: float  # CPU seconds of decode_image per image, on one thread

    @property
    def images(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def on(self, device: torch.device) -> Bench:
        """The same, with the bare side's batches already on ``device``."""
        return replace(self, batches=[batch.to(device) for batch in self.batches])


def prepare(
    workdir: str,
    images: int,
    size: int,
    batch_size: int,
    chunk_size: int,
    photos: str | None = None,
    copies: int = 1,
) -> Bench:
    """Synthetic bins, or real photos in ABID's layout each under ``copies`` ids."""
    source = Location(f"{workdir}/bucket")
    if photos is None:
        synthesize(source, bins=images, seed=11, max_count=5)
    else:
        make_bucket(Path(photos), Path(workdir) / "bucket", copies)
    ingested = f"{workdir}/ingested"
    ingest_metadata(source, Location(ingested))
    # The bare side's batches are the end-to-end run's: its plan's chunks cut in batch_size.
    plan = plan_scoring(
        source, Location(ingested), model_version="bench", prefix=PREFIX, chunk_size=chunk_size
    )
    batches = []
    decode_seconds = 0.0
    for chunk in plan.chunks:
        for start in range(0, len(chunk), batch_size):
            payloads = [source.read_bytes(key) for key in chunk[start : start + batch_size]]
            started = time.process_time()
            decoded = [decode_image(payload, size) for payload in payloads]
            decode_seconds += time.process_time() - started
            batches.append(to_model_input(np.stack(decoded)))
    images = sum(len(batch) for batch in batches)
    return Bench(workdir, source, ingested, batches, decode_seconds / max(images, 1))


# -- the two sides ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndToEnd:
    seconds: float
    model_seconds: float


def end_to_end(
    bench: Bench,
    scorer: Scorer,
    *,
    batch_size: int,
    chunk_size: int,
    concurrency: int,
    limit: int | None = None,
) -> EndToEnd:
    """One scoring run into a fresh copy of the ingested output, timed whole."""
    folder = tempfile.mkdtemp(prefix="out-", dir=bench.workdir)
    shutil.copytree(bench.ingested, folder, dirs_exist_ok=True)
    output = Location(folder)
    try:
        summary = score_images(
            bench.source,
            output,
            model=scorer,
            prefix=PREFIX,
            limit=limit,
            batch_size=batch_size,
            chunk_size=chunk_size,
            concurrency=concurrency,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    wanted = bench.images if limit is None else min(limit, bench.images)
    if summary.scored != wanted or summary.quarantined or summary.unknown_expected:
        raise RuntimeError(
            f"Expected {wanted} images scored with known expected quantities, none quarantined, "
            f"but got {summary.scored} scored, {summary.quarantined} quarantined, "
            f"{summary.unknown_expected} without an expected quantity"
        )
    return EndToEnd(summary.seconds, summary.model_seconds)


def bare_model(
    model: CountingModel, batches: list[torch.Tensor], runtime: Runtime, flips: bool
) -> float:
    """Seconds for the model alone over tensors already decoded and normalised in memory."""
    started = time.perf_counter()
    for images in batches:
        predict_batch(model, images, runtime=runtime, flips=flips)
    return time.perf_counter() - started


# -- other processes -------------------------------------------------------------------------------
def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat") as handle:
            ticks = [int(value) for value in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class OtherLoad:
    """CPU seconds other processes (and the hypervisor's steal) took while a side ran, out of
    the CPU seconds the machine had: 0 on a quiet machine, None where it cannot be read."""

    others: float = 0.0
    capacity: float = 0.0
    known: bool = True

    def timed(self, side: Callable[[], object]) -> object:
        machine, own, wall = _machine_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
        result = side()
        wall = time.perf_counter() - wall
        now = _machine_busy_seconds()
        if machine is None or now is None:
            self.known = False
        else:
            own = sum(os.times()[:2]) - own
            self.others += max(0.0, (now - machine) - own)
            self.capacity += wall * (os.cpu_count() or 1)
        return result

    @property
    def share(self) -> float | None:
        return self.others / self.capacity if self.known and self.capacity else None


# -- the run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    arch: str
    decode: str  # how the end-to-end side decoded: Pillow threads, or the split on the device
    shipped: bool  # decoded as scoring does by default (the goal's row)
    images: int
    bare_seconds: float
    end_to_end_seconds: float
    model_seconds: float
    round_ratios: tuple[float, ...]
    other_load: float | None

    @property
    def bare_rate(self) -> float:
        return self.images / self.bare_seconds

    @property
    def end_to_end_rate(self) -> float:
        return self.images / self.end_to_end_seconds

    @property
    def model_rate(self) -> float:
        return self.images / self.model_seconds

    @property
    def ratio(self) -> float:
        return self.end_to_end_rate / self.bare_rate


class HostShare(logging.Handler):
    """The share of a run's images Pillow decoded on the host, from the scorer's debug lines."""

    PATTERN = re.compile(r"decoded (\d+) images for \S+: (\d+) by Pillow")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.images = self.on_host = 0

    def emit(self, record: logging.LogRecord) -> None:
        found = self.PATTERN.match(record.getMessage())
        if found:
            self.images += int(found[1])
            self.on_host += int(found[2])

    @property
    def share(self) -> float | None:
        return self.on_host / self.images if self.images else None


def measure(arch: str, bench: Bench, runtime: Runtime, args) -> list[Row]:
    """One row per decoding choice: the end-to-end runs of each choice and the bare model
    alternate round by round."""
    torch.manual_seed(0)
    model = CountingModel(arch, head="ce", max_count=5).eval()
    model = model.to(runtime.device, memory_format=torch.channels_last)
    bench = bench.on(runtime.device)
    shares = args.host_shares if runtime.device.type == "cuda" else [None]
    scorers = [
        Scorer(
            model=model,
            version="bench",
            image_size=args.image_size,
            flips=args.flips,
            runtime=runtime,
            host_share=share,
        )
        for share in shares
    ]
    options = {
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "concurrency": args.concurrency,
    }
    # Warm up kernels, the allocator, the thread pools and the Parquet writer on one batch.
    bare_model(model, bench.batches[:1], runtime, args.flips)
    for scorer in scorers:
        end_to_end(bench, scorer, limit=args.batch_size, **options)

    runs: list[list[EndToEnd]] = [[] for _ in scorers]
    bare: list[float] = []
    on_host = [HostShare() for _ in scorers]
    scorer_log = logging.getLogger("bincount.nightly.scorer")
    scorer_log.setLevel(logging.DEBUG)
    load = OtherLoad()
    for number in range(1, args.rounds + 1):
        bare.append(load.timed(lambda: bare_model(model, bench.batches, runtime, args.flips)))
        for scorer, record, counter in zip(scorers, runs, on_host, strict=True):
            scorer_log.addHandler(counter)
            try:
                record.append(load.timed(lambda s=scorer: end_to_end(bench, s, **options)))
            finally:
                scorer_log.removeHandler(counter)
            log(
                f"{arch} {_decode_label(scorer.host_share, runtime)} round {number}/{args.rounds}:"
                f" end to end {record[-1].seconds:.2f} s (model {record[-1].model_seconds:.2f} s),"
                f" bare model {bare[-1]:.2f} s, ratio {bare[-1] / record[-1].seconds:.3f}"
            )
    rows = []
    for scorer, record, counter in zip(scorers, runs, on_host, strict=True):
        label = _decode_label(scorer.host_share, runtime)
        if counter.share is not None and scorer.host_share is None:
            label += f" ({counter.share:.0%} on host)"
        rows.append(
            Row(
                arch=arch,
                decode=label,
                shipped=scorer.host_share is None,
                images=bench.images,
                bare_seconds=statistics.median(bare),
                end_to_end_seconds=statistics.median(run.seconds for run in record),
                model_seconds=statistics.median(run.model_seconds for run in record),
                round_ratios=tuple(b / run.seconds for run, b in zip(record, bare, strict=True)),
                other_load=load.share,
            )
        )
    return rows


def _decode_label(share: float | None, runtime: Runtime) -> str:
    if runtime.device.type != "cuda":
        return "Pillow threads"
    if share is None:
        return "split, adaptive"
    if share == 0:
        return "nvJPEG (+ Pillow's)"
    return "Pillow, pinned" if share == 1 else f"split, {share:.0%} host"


def _shares(text: str) -> list[float | None]:
    shares = []
    for item in text.split(","):
        item = item.strip()
        share = None if item == "auto" else float(item)
        if share is not None and not 0 <= share <= 1:
            raise argparse.ArgumentTypeError(f"Expected 'auto' or a share in [0, 1], got {item!r}")
        shares.append(share)
    return shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", default="resnet18,mobilenet_v3_small", help="comma-separated torchvision names"
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--flips",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="test-time flips (3 forward passes), the saved config's default",
    )
    parser.add_argument("--images", type=int, default=768, help="images per repetition")
    parser.add_argument("--rounds", type=int, default=3, help="A/B alternations")
    shipped = defaults()  # a run's own values when nothing is set
    parser.add_argument(
        "--chunk-size", type=int, default=shipped.chunk_size, help="score_chunk's chunk size"
    )
    parser.add_argument("--concurrency", type=int, default=shipped.max_concurrency)
    parser.add_argument("--goal", type=float, default=GOAL_RATIO, help="end-to-end/bare ratio")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses --goal")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cuda: decode JPEGs there too"
    )
    parser.add_argument(
        "--host-shares",
        type=_shares,
        default=[None, 0.0],
        help="on cuda, one row each: the share of JPEGs Pillow decodes on the host beside "
        "nvJPEG (auto: follow both sides' rates; 0: nvJPEG takes every JPEG it can; 1: Pillow "
        "alone, into pinned memory). Default auto,0",
    )
    parser.add_argument(
        "--photos",
        help="a folder in ABID's layout (bin-images/, metadata/), e.g. ../shared/abid/sample or "
        "a carried .abid_carry/, instead of --images synthetic bins",
    )
    parser.add_argument("--copies", type=int, default=1, help="with --photos: ids per photo")
    args = parser.parse_args(argv)
    archs = [arch.strip() for arch in args.archs.split(",") if arch.strip()]
    if not archs or min(args.images, args.rounds, args.batch_size, args.chunk_size) < 1:
        raise SystemExit(
            f"Expected --archs and positive --images, --rounds, --batch-size and --chunk-size, "
            f"but got {args.archs!r}, {args.images}, {args.rounds}, {args.batch_size} and "
            f"{args.chunk_size}"
        )

    runtime = resolve_runtime(args.device)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-score-") as workdir:
        started = time.perf_counter()
        bench = prepare(
            workdir,
            args.images,
            args.image_size,
            args.batch_size,
            args.chunk_size,
            photos=args.photos,
            copies=args.copies,
        )
        what = "synthetic bins" if args.photos is None else f"photos of {args.photos}"
        log(
            f"prepared {bench.images} {what}, decoded at {args.image_size} px, "
            f"in {time.perf_counter() - started:.1f} s"
        )
        for arch in archs:
            rows.extend(measure(arch, bench, runtime, args))

    report(rows, args, bench.decode_seconds)
    if args.check and min(row.ratio for row in rows if row.shipped) < args.goal:
        return 1
    return 0


def report(rows: list[Row], args, decode_seconds: float) -> None:
    print()
    print(
        f"Scoring at {args.image_size} px, batch {args.batch_size}, flips "
        f"{'on' if args.flips else 'off'}, {rows[0].images} images per repetition, "
        f"{args.rounds} alternating rounds (median of each side), "
        f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs, model on "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'the CPU'}"
    )
    header = (
        f"{'arch':<20}{'decode':<30}{'bare img/s':>11}{'e2e img/s':>11}{'model in e2e':>14}"
        f"{'e2e s off model':>17}{'ratio':>8}  {'per round':<16}{'others':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        rounds = "/".join(f"{ratio:.2f}" for ratio in row.round_ratios)
        others = "?" if row.other_load is None else f"{row.other_load:.0%}"
        print(
            f"{row.arch:<20}{row.decode:<30}{row.bare_rate:>11.1f}{row.end_to_end_rate:>11.1f}"
            f"{row.model_rate:>14.1f}{row.end_to_end_seconds - row.model_seconds:>17.2f}"
            f"{row.ratio:>8.3f}  {rounds:<16}{others:>7}"
            + ("" if row.ratio >= args.goal or not row.shipped else "  below goal")
        )
    print()
    print(
        "bare: predict_batch on tensors decoded and normalised in memory beforehand. "
        "e2e: plan_scoring + score_chunk per chunk into a fresh output, timed whole."
    )
    print(
        "model in e2e: images/s over the chunks' model_seconds (normalisation + predict_batch, "
        "while the decode threads run); below bare, the model shared the CPUs with decoding."
    )
    print(
        "e2e s off model: end-to-end seconds minus model_seconds (planning, waiting for the "
        "first images, Parquet writes). per round: that round's ratio."
    )
    print("others: share of the machine's CPU time other processes took during the timed runs.")
    print(
        f"CPU per image: decode_image {1000 * decode_seconds:.2f} ms on one thread (measured "
        "while preparing); bare model "
        + ", ".join(f"{row.arch} {1000 / row.bare_rate:.2f} ms" for row in rows if row.shipped)
        + f" of wall time on {torch.get_num_threads()} threads."
    )
    loads = [row.other_load for row in rows if row.other_load is not None]
    if loads and max(loads) > NOISY:
        print(
            f"WARNING: other processes took up to {max(loads):.0%} of the CPUs while this ran; "
            "the rates and ratios are not reliable. Rerun on a quiet machine."
        )
    met = min(row.ratio for row in rows if row.shipped) >= args.goal
    verdict = "met" if met else "NOT met"
    print(
        f"goal: end-to-end >= {args.goal:g} x bare model for every arch, decoding as scoring "
        f"does by default (the other rows compare): {verdict}"
    )


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
