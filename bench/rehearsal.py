"""A full-bucket rehearsal on S3: ingest, a rerun that adds nothing, the denied-then-fixed drill.

A moto server on 127.0.0.1 gets ``--objects`` ABID-shaped metadata objects twice: once public-read
(the clean bucket) and once private (the drill's bucket: anonymous listing works, every anonymous
GET answers 403). Each step is the ``bincount ingest`` command in a fresh process, against a
Prefect API started for the run (as a deployment's run reports to one), with its wall time and
peak RSS (the process's own high-water mark, VmHWM, written by the child as it exits):

1. clean: anonymous reads of the public bucket into an empty output; every object ingested;
2. rerun: the same command again; 0 ingested, every object already ingested;
3. denied: anonymous reads of the private bucket into another empty output; the run exits
   non-zero with the circuit breaker's message and marks nothing done (no bins, no quarantine);
4. fixed: the same output and bucket with signed reads (``--no-source-anonymous``); every object
   ingested, and the bins equal the clean run's (count and a checksum of the sorted
   ``image_id, expected_quantity, sku_count, etag`` rows).

    python bench/rehearsal.py [--objects 120000] [--upload-workers 16] [--private-by put|copy]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: bench/ is on sys.path, the checkout is not
    sys.path.insert(0, str(REPO))

from bench.ingest import metadata_keys, metadata_object  # noqa: E402
from bincount.testing.s3server import (  # noqa: E402
    TEST_CREDENTIALS,
    create_public_bucket,
    s3_client,
)

MB = 1024 * 1024
RSS_LIMIT_MB = 1024
CLEAN, PRIVATE = "rehearsal-clean", "rehearsal-private"


# -- filling the buckets ---------------------------------------------------------------------------
def abid_objects(count: int) -> Iterator[tuple[str, bytes]]:
    """``count`` metadata objects as ``bench/ingest.py`` makes them (same keys, same bytes)."""
    rng = random.Random(count)
    for key in metadata_keys(count):
        yield key, metadata_object(rng)


def _in_pool(items: Iterable, call: Callable, workers: int) -> int:
    """``call(item)`` for every item, ``workers`` at a time, a bounded batch in memory at once."""
    done, items = 0, iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while batch := list(islice(items, 4 * workers * 64)):
            done += sum(1 for _ in pool.map(call, batch))
    return done


def upload(endpoint_url: str, bucket: str, count: int, acl: str, workers: int) -> int:
    """PUT the ``count`` objects into ``bucket`` with ``acl`` (public-read or private)."""
    client = s3_client(endpoint_url, max_pool_connections=workers)

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1], ACL=acl)

    return _in_pool(abid_objects(count), put, workers)


def copy_private(endpoint_url: str, source: str, target: str, count: int, workers: int) -> int:
    """Server-side copies of the clean bucket's objects into ``target``, private."""
    client = s3_client(endpoint_url, max_pool_connections=workers)

    def copy(key: str) -> None:
        client.copy_object(
            Bucket=target, Key=key, CopySource={"Bucket": source, "Key": key}, ACL="private"
        )

    return _in_pool(metadata_keys(count), copy, workers)


# -- one step: the command in a fresh process ----------------------------------------------------
# ``bincount`` as its console script runs it, writing the process's own peak RSS (VmHWM, bytes)
# to $REHEARSAL_PEAK_FILE when it exits, however it exits.
PEAK_REPORTING_CLI = """
import atexit, os, sys

def _peak():
    try:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return
    with open(os.environ["REHEARSAL_PEAK_FILE"], "w") as out:
        out.write(str(kib * 1024))

atexit.register(_peak)
sys.argv[0] = "bincount"
from flows.cli import console
sys.exit(console())
"""


@dataclass(frozen=True)
class Step:
    name: str
    objects: int  # objects the step ingested (or, for the denied run, listed)
    seconds: float
    peak_rss: int
    exit_code: int
    result: dict | None
    error: str

    @property
    def objects_per_second(self) -> float:
        return self.objects / self.seconds if self.seconds else 0.0


def run_ingest(name: str, env: dict[str, str], bucket: str, output: Path, anonymous: bool) -> Step:
    """``bincount ingest`` of ``bucket`` into ``output`` in a new process; its peak RSS alone."""
    command = [sys.executable, "-c", PEAK_REPORTING_CLI, "ingest"]
    command += ["--source", f"s3://{bucket}", "--output", str(output)]
    command += [] if anonymous else ["--no-source-anonymous"]
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryFile() as out:
        peak_file = Path(folder, "peak")
        err_path = Path(folder, "stderr")
        with err_path.open("wb") as err:
            started = time.perf_counter()
            process = subprocess.Popen(
                command,
                env={**env, "REHEARSAL_PEAK_FILE": str(peak_file)},
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err_path.read_text(errors="replace")
        # The child's own high-water mark (VmHWM). ru_maxrss is the fallback where there is no
        # /proc: Linux carries the parent's peak into a child's ru_maxrss across fork and exec,
        # so under a large parent (a pytest worker) it reads the parent, not the child.
        peak = int(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss * 1024
    result = json.loads(stdout) if process.returncode == 0 else None
    lines = stderr.strip().splitlines()
    objects = result["ingested"] if result else 0
    return Step(name, objects, seconds, peak, process.returncode, result,
                lines[-1] if lines else "")  # fmt: skip


def command_environment(endpoint_url: str, prefect_api_url: str) -> dict[str, str]:
    """An operator's environment: the endpoint and dummy credentials, never real ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINCOUNT_", "AWS_"))}
    env.update(TEST_CREDENTIALS)
    env["BINCOUNT_S3_ENDPOINT_URL"] = endpoint_url
    env["PREFECT_API_URL"] = prefect_api_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# -- what the output holds -----------------------------------------------------------------------
def bins_fingerprint(output: Path) -> tuple[int, str]:
    """The bins rows and a SHA-256 of their sorted (image_id, expected_quantity, sku_count, etag):
    equal across buckets when the same objects were ingested the same way."""
    from bincount.core.storage import Location
    from bincount.core.tables import read_table

    table = read_table(Location(str(output)), "bins")
    columns = ["image_id", "expected_quantity", "sku_count", "etag"]
    rows = sorted(tuple(row.values()) for row in table.select(columns).to_pylist())
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


def row_count(output: Path, name: str) -> int:
    from bincount.core.pending import read_pending
    from bincount.core.storage import Location
    from bincount.core.tables import read_table

    location = Location(str(output))
    return read_pending(location).num_rows if name == "pending" else (
        read_table(location, name).num_rows
    )  # fmt: skip


# -- the rehearsal -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rehearsal:
    objects: int
    uploads: list[tuple[str, float]]  # (what, seconds)
    steps: list[Step]
    clean_bins: tuple[int, str]
    fixed_bins: tuple[int, str]
    denied_pending: int


def rehearse(
    endpoint_url: str,
    prefect_api_url: str,
    objects: int,
    workdir: Path,
    *,
    upload_workers: int = 16,
    private_by: str = "put",
) -> Rehearsal:
    """Fill both buckets, run the four steps, check each; raises on the first check missed."""
    uploads: list[tuple[str, float]] = []
    for bucket in (CLEAN, PRIVATE):
        create_public_bucket(endpoint_url, bucket)
    started = time.perf_counter()
    upload(endpoint_url, CLEAN, objects, "public-read", upload_workers)
    uploads.append(("upload, public-read (put_object)", time.perf_counter() - started))
    log(f"uploaded {objects} public objects in {uploads[-1][1]:.1f} s")
    started = time.perf_counter()
    if private_by == "copy":
        copy_private(endpoint_url, CLEAN, PRIVATE, objects, upload_workers)
    else:
        upload(endpoint_url, PRIVATE, objects, "private", upload_workers)
    what = "copy_object" if private_by == "copy" else "put_object"
    uploads.append((f"private copy ({what})", time.perf_counter() - started))
    log(f"made {objects} private objects in {uploads[-1][1]:.1f} s")

    env = command_environment(endpoint_url, prefect_api_url)
    clean_out, drill_out = workdir / "clean", workdir / "drill"
    steps: list[Step] = []

    def step(name: str, bucket: str, output: Path, anonymous: bool) -> Step:
        steps.append(run_ingest(name, env, bucket, output, anonymous))
        done = steps[-1]
        log(f"{name}: exit {done.exit_code}, {done.seconds:.1f} s, "
            f"peak RSS {done.peak_rss / MB:.0f} MB, {done.result or done.error}")  # fmt: skip
        return done

    completed(step("clean", CLEAN, clean_out, anonymous=True),
              listed=objects, ingested=objects, quarantined=0, pending=0)  # fmt: skip
    completed(step("rerun", CLEAN, clean_out, anonymous=True),
              already_ingested=objects, ingested=0, quarantined=0)  # fmt: skip

    denied = step("denied", PRIVATE, drill_out, anonymous=True)
    expect(denied.exit_code != 0, "the denied run to exit non-zero, but it exited 0")
    message = "objects of a chunk could not be read (read_denied"
    expect(message in denied.error and "--source-anonymous" in denied.error,
           f"the circuit breaker's message, but got {denied.error!r}")  # fmt: skip
    marked = {name: row_count(drill_out, name) for name in ("bins", "quarantine")}
    expect(marked == {"bins": 0, "quarantine": 0}, f"nothing marked done, but got {marked}")
    denied_pending = row_count(drill_out, "pending")
    expect(denied_pending > 0, "the denied objects read to be pending, but none are")
    log(f"denied: {denied_pending} objects pending, nothing marked done")

    completed(step("fixed (signed reads)", PRIVATE, drill_out, anonymous=False),
              ingested=objects, quarantined=0, pending=0)  # fmt: skip
    expect(row_count(drill_out, "pending") == 0, "no pending rows after the fixed run")
    clean_bins, fixed_bins = bins_fingerprint(clean_out), bins_fingerprint(drill_out)
    expect(
        clean_bins == fixed_bins and clean_bins[0] == objects,
        f"the fixed bins to equal the clean ones ({clean_bins}), but got {fixed_bins}",
    )
    return Rehearsal(objects, uploads, steps, clean_bins, fixed_bins, denied_pending)


def completed(step: Step, **want: int) -> None:
    """The step exited 0 and its summary holds ``want``."""
    expect(step.exit_code == 0, f"{step.name} to exit 0, but got {step.exit_code}: {step.error}")
    got = {name: step.result[name] for name in want}
    expect(got == want, f"{want} from {step.name}, but got {got}")


def expect(condition: bool, expected: str) -> None:
    if not condition:
        raise AssertionError(f"Expected {expected}")


# -- the program ---------------------------------------------------------------------------------
@contextmanager
def prefect_api(home: Path) -> Iterator[str]:
    """A Prefect API with a temporary database for this run; its URL."""
    from bincount.core import telemetry

    os.environ["PREFECT_HOME"] = str(home)
    telemetry.quiet(force=True)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=120_000, help="objects per bucket")
    parser.add_argument("--upload-workers", type=int, default=16)
    parser.add_argument(
        "--private-by", choices=("put", "copy"), default="put",
        help="make the private bucket by server-side copy_object or by put_object",
    )  # fmt: skip
    parser.add_argument("--keep", help="keep the outputs in this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    if not 1 <= args.objects <= 535_234 or args.upload_workers < 1:
        raise SystemExit(
            f"Expected --objects in 1..535234 (ABID's ids) and --upload-workers >= 1, but got "
            f"{args.objects} and {args.upload_workers}"
        )
    from bincount.testing.s3server import moto_s3_server

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="bench-rehearsal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with moto_s3_server() as moto, prefect_api(workdir / "prefect-home") as api_url:
            rehearsal = rehearse(
                moto.endpoint_url,
                api_url,
                args.objects,
                workdir,
                upload_workers=args.upload_workers,
                private_by=args.private_by,
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(rehearsal, time.perf_counter() - started))
    return 0 if max(s.peak_rss for s in rehearsal.steps) < RSS_LIMIT_MB * MB else 1


def report(rehearsal: Rehearsal, total_seconds: float) -> str:
    lines = [
        f"Full-bucket rehearsal: {rehearsal.objects} ABID-shaped metadata objects on a loopback "
        "moto S3 server, `bincount ingest` in a fresh process per step",
        f"{'step':<34}{'objects':>9}{'seconds':>9}{'objects/s':>11}{'peak RSS MB':>13}{'exit':>6}"
        f"{'flow s':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    for what, seconds in rehearsal.uploads:
        rate = rehearsal.objects / seconds
        lines.append(f"{what:<34}{rehearsal.objects:>9}{seconds:>9.1f}{rate:>11.0f}")
    for step in rehearsal.steps:
        lines.append(
            f"{step.name:<34}{step.objects:>9}{step.seconds:>9.1f}"
            f"{step.objects_per_second:>11.0f}{step.peak_rss / MB:>13.0f}{step.exit_code:>6}"
            + (f"{step.result['seconds']:>8.1f}" if step.result else "")
        )
    denied = next(step for step in rehearsal.steps if step.name == "denied")
    count, digest = rehearsal.clean_bins
    peak = max(step.peak_rss for step in rehearsal.steps) / MB
    lines += [
        "",
        f"denied: {denied.error}",
        f"denied: {rehearsal.denied_pending} objects left pending, no bins, quarantine empty",
        f"bins: clean {count} rows, fixed {rehearsal.fixed_bins[0]} rows, sha256 {digest[:16]}... "
        f"({'equal' if rehearsal.fixed_bins == rehearsal.clean_bins else 'DIFFERENT'})",
        f"peak RSS of any step: {peak:.0f} MB (limit {RSS_LIMIT_MB} MB: "
        f"{'met' if peak < RSS_LIMIT_MB else 'NOT met'}); whole rehearsal {total_seconds:.0f} s",
    ]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[rehearsal] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
