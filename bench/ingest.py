"""Ingestion throughput with S3-like latency: the platform against a sequential boto3 loop.

A moto server holds N metadata objects per size (public-read, ABID-shaped); a fault proxy in
front of it delays every request by ``--latency-ms`` (30 ms is real S3 seen from outside its
region). Each side runs in a fresh process so its peak memory is its own:

- baseline: one unsigned boto3 client, ``get_object`` + ``read`` for each key, one after another.
  It is handed the key list for free (no listing), and for large sizes it is timed on a sample
  of ``--baseline-sample`` keys: objects/s is a rate, and the full loop would take minutes.
- platform: ``bincount.data.ingest.ingest_metadata`` from an empty output folder, timed whole: its
  own listing, fetching, parsing and Parquet writes.

Also measured: what moto itself serves with no latency and many requests in flight, and what the
whole rig (proxy + moto) serves at the platform's concurrency. Those are the ceilings; when the
platform reaches them, the rig and not the platform is the limit.

    python bench/ingest.py [--sizes 1000,10000] [--latency-ms 30] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

from bincount.testing.proxycontrol import fault_proxy
from bincount.testing.s3server import create_public_bucket, moto_s3_server, upload_public

GOAL_RATIO = 10.0
MIB = 1024 * 1024


# -- the objects ---------------------------------------------------------------------------------
_WORDS = (
    "Fiskars", "Scissors", "Kitchen", "Container", "Lid", "Clear", "Premier", "Titanium",
    "Storage", "Organizer", "Cable", "Charger", "Pack", "Black", "White", "Stainless", "Steel",
    "Bottle", "Glass", "Notebook", "Pen", "Marker", "Socks", "Cotton", "Phone", "Case", "Screen",
    "Protector", "Vitamin", "Tablets", "Dog", "Toy", "Rope", "Candle", "Soy", "Wax", "Brush",
)  # fmt: skip


def metadata_object(rng: random.Random) -> bytes:
    """One metadata object in the ABID shape, about as large as a real one (~2 KB)."""
    skus = {}
    for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4, 5))):
        asin = "B0" + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=8))
        name = " ".join(rng.choices(_WORDS, k=rng.randint(4, 12)))
        skus[asin] = {
            "asin": asin,
            "height": {"unit": "IN", "value": round(rng.uniform(0.2, 12), 6)},
            "length": {"unit": "IN", "value": round(rng.uniform(0.5, 16), 6)},
            "name": name,
            "normalizedName": name,
            "quantity": rng.randint(1, 8),
            "weight": {"unit": "pounds", "value": round(rng.uniform(0.05, 6), 6)},
            "width": {"unit": "IN", "value": round(rng.uniform(0.5, 12), 6)},
        }
    expected = sum(sku["quantity"] for sku in skus.values())
    document = {"BIN_FCSKU_DATA": skus, "EXPECTED_QUANTITY": expected}
    return json.dumps(document, indent=4).encode()


ABID_LAST_ID = 535_234


def metadata_keys(size: int) -> list[str]:
    """``size`` ids spread over ABID's id space as the bucket names them: zero-padded to five
    digits below 100000, six digits above, so listing partitions see the real key spread."""
    ids = random.Random(size).sample(range(1, ABID_LAST_ID + 1), size)
    return sorted(f"metadata/{image_id:05d}.json" for image_id in ids)


def bucket_for(size: int) -> str:
    return f"bench-ingest-{size}"


# -- the two sides, each run in a fresh process ----------------------------------------------------
@dataclass(frozen=True)
class SideResult:
    side: str
    objects: int
    seconds: float
    rss_after_import: int
    rss_peak: int

    @property
    def objects_per_second(self) -> float:
        return self.objects / self.seconds


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    # ru_maxrss is in KiB on Linux: the high-water mark of this process alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_baseline(endpoint_url: str, bucket: str, keys: list[str]) -> SideResult:
    """A sequential boto3 loop: one unsigned client, one ``get_object`` at a time."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    rss_after_import = _rss()
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 8, "mode": "standard"}),
    )
    started = time.perf_counter()
    for key in keys:
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
    seconds = time.perf_counter() - started
    return SideResult("baseline", len(keys), seconds, rss_after_import, _peak_rss())


def run_platform(
    endpoint_url: str, bucket: str, size: int, concurrency: int, partitions: int, chunk_size: int
) -> SideResult:
    """The platform's ingestion of the whole bucket into an empty local output folder."""
    from bincount.core.storage import Location
    from bincount.data.ingest import ingest_metadata

    rss_after_import = _rss()
    output_dir = tempfile.mkdtemp(prefix="bench-ingest-output-")
    try:
        source = Location(
            f"s3://{bucket}",
            endpoint_url=endpoint_url,
            anonymous=True,
            max_concurrency=concurrency,
        )
        started = time.perf_counter()
        summary = ingest_metadata(
            source,
            Location(output_dir),
            concurrency=concurrency,
            partitions=partitions,
            chunk_size=chunk_size,
        )
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    done = summary.ingested + summary.quarantined
    if summary.listed != size or done != size or summary.quarantined:
        raise RuntimeError(
            f"Expected {size} objects listed and ingested, none quarantined, but got "
            f"{summary.listed} listed, {summary.ingested} ingested, "
            f"{summary.quarantined} quarantined"
        )
    return SideResult("platform", done, seconds, rss_after_import, _peak_rss())


def in_fresh_process(function, *args) -> SideResult:
    """Run ``function`` in a new interpreter, so its peak memory is measured on its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# -- the rig's ceilings ----------------------------------------------------------------------------
def get_throughput(endpoint_url: str, bucket: str, keys: list[str], concurrency: int) -> float:
    """Objects/s of plain concurrent GETs (aiohttp, no parsing): what the server side can serve."""
    import aiohttp

    async def load() -> float:
        gate = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def get(key: str) -> None:
                async with gate, session.get(f"{endpoint_url}/{bucket}/{key}") as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"Expected 200 for {key}, but got {answer.status}")

            started = time.perf_counter()
            await asyncio.gather(*(get(key) for key in keys))
            return len(keys) / (time.perf_counter() - started)

    return asyncio.run(load())


# -- the run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    size: int
    result: SideResult
    requests_by_method: dict[str, int]
    sampled: bool

    @property
    def requests(self) -> int:
        return sum(self.requests_by_method.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated object counts")
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument(
        "--baseline-sample", type=int, default=1000, help="most keys the baseline loop reads"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--goal", type=float, default=GOAL_RATIO, help="platform/baseline ratio")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses --goal")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    if not sizes or min(sizes) < 1 or args.baseline_sample < 1:
        raise SystemExit(
            f"Expected positive --sizes and --baseline-sample, but got {args.sizes!r} "
            f"and {args.baseline_sample}"
        )

    rows: list[Row] = []
    with moto_s3_server() as moto:
        for size in sizes:
            started = time.perf_counter()
            create_public_bucket(moto.endpoint_url, bucket_for(size))
            rng = random.Random(size)
            upload_public(
                moto.endpoint_url,
                bucket_for(size),
                {key: metadata_object(rng) for key in metadata_keys(size)},
            )
            log(f"uploaded {size} objects in {time.perf_counter() - started:.1f} s")

        probe_bucket = bucket_for(max(sizes))
        probe_keys = metadata_keys(max(sizes))[:2000]
        moto_ceiling = get_throughput(moto.endpoint_url, probe_bucket, probe_keys, 32)
        log(f"moto alone: {moto_ceiling:.0f} objects/s")

        with fault_proxy(moto.endpoint_url, latency_ms=args.latency_ms) as proxy:
            rig_ceiling = get_throughput(
                proxy.endpoint_url, probe_bucket, probe_keys, args.concurrency
            )
            log(f"proxy + moto at {args.concurrency} in flight: {rig_ceiling:.0f} objects/s")
            for size in sizes:
                keys = metadata_keys(size)[: args.baseline_sample]
                proxy.reset()
                baseline = in_fresh_process(
                    run_baseline, proxy.endpoint_url, bucket_for(size), keys
                )
                rows.append(Row(size, baseline, proxy.stats().requests_by_method, len(keys) < size))
                log(f"{size}: baseline {baseline.objects_per_second:.1f} objects/s")
                proxy.reset()
                platform = in_fresh_process(
                    run_platform,
                    proxy.endpoint_url,
                    bucket_for(size),
                    size,
                    args.concurrency,
                    args.partitions,
                    args.chunk_size,
                )
                rows.append(Row(size, platform, proxy.stats().requests_by_method, False))
                log(f"{size}: platform {platform.objects_per_second:.1f} objects/s")

    ratios = report(rows, args, moto_ceiling, rig_ceiling)
    if args.check and min(ratios) < args.goal:
        return 1
    return 0


def report(rows: list[Row], args, moto_ceiling: float, rig_ceiling: float) -> list[float]:
    print()
    print(
        f"Ingestion through a {args.latency_ms:g} ms-per-request proxy in front of moto "
        f"(platform: {args.concurrency} in flight, {args.partitions} listing partitions)"
    )
    header = (
        f"{'size':>6}  {'side':<10}{'objects':>8}{'requests':>10}{'seconds':>9}"
        f"{'objects/s':>11}{'peak RSS MiB':>14}{'+ over imports':>16}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    ratios: list[float] = []
    baseline_rate = 0.0
    for row in rows:
        result = row.result
        ratio = ""
        if result.side == "baseline":
            baseline_rate = result.objects_per_second
        else:
            ratios.append(result.objects_per_second / baseline_rate)
            ratio = f"{ratios[-1]:.1f}x"
        side = result.side + ("*" if row.sampled else "")
        print(
            f"{row.size:>6}  {side:<10}{result.objects:>8}{row.requests:>10}"
            f"{result.seconds:>9.2f}{result.objects_per_second:>11.1f}"
            f"{result.rss_peak / MIB:>14.1f}"
            f"{(result.rss_peak - result.rss_after_import) / MIB:>16.1f}{ratio:>8}"
        )
    print()
    if any(row.sampled for row in rows):
        print(f"* baseline timed on the first {args.baseline_sample} keys (objects/s is a rate).")
    print(
        "baseline: sequential get_object + read, key list given (no listing). "
        "platform: ingest_metadata timed whole (listing, fetch, parse, Parquet writes)."
    )
    for row in rows:
        if row.requests > 1.1 * row.result.objects:
            print(
                f"{row.size}: {row.result.side} made {row.requests / row.result.objects:.2f} "
                f"requests per object ({row.requests_by_method})."
            )
    print(
        "peak RSS: ru_maxrss of the side's own fresh process; '+ over imports' is that peak "
        "minus the RSS right after the side's imports."
    )
    print(
        f"ceilings (aiohttp GETs, no parsing, same 2-core machine): moto alone, 32 in flight: "
        f"{moto_ceiling:.0f} objects/s; proxy + moto, {args.concurrency} in flight: "
        f"{rig_ceiling:.0f} objects/s."
    )
    for row in rows:
        if row.result.side != "platform":
            continue
        request_rate = row.requests / row.result.seconds
        share = request_rate / rig_ceiling
        print(
            f"{row.size}: the platform sent {request_rate:.0f} requests/s, {share:.0%} of what "
            "the rig serves"
            + (": moto, not the platform, is the limit here." if share >= 0.8 else ".")
        )
    verdict = "met" if min(ratios) >= args.goal else "NOT met"
    print(f"goal: platform >= {args.goal:g}x baseline at every size: {verdict}")
    return ratios


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
