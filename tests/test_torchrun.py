"""Data-parallel training as docs/operators/scaling.md runs it: ``torchrun --standalone`` with two
CPU processes (gloo) on a tiny manifest, bounded by epochs. Each rank trains on its own half of
every epoch, the halves together hold the train split once, and rank 0 alone writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from contextlib import suppress
from pathlib import Path

import pyarrow.compute as pc

from bincount.core.storage import Location
from bincount.data.manifest import load_manifest
from bincount.model.registry import list_models
from bincount.testing.pipeline import run_pipeline
from bincount.testing.s3server import TEST_CREDENTIALS, s3_client
from tests.builders import write_clean_bucket

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 2
SHARE = re.compile(
    r"rank (\d) of 2, epoch (\d+): (\d+) of (\d+) training images in \d+ batches, "
    r"ids fingerprint ([0-9a-f]{16})"
)


def _fingerprint(image_ids) -> int:
    """The reference: the sum of each id's 64-bit BLAKE2b digest, modulo 2**64."""
    digests = (hashlib.blake2b(i.encode(), digest_size=8).digest() for i in image_ids)
    return sum(int.from_bytes(d, "big") for d in digests) % 2**64


def _torchrun(command: list[str], env: dict[str, str], timeout_s: float) -> str:
    """Run torchrun in a process group of its own (its ranks included); its output."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    finally:  # a rank that outlived torchrun, or all of them after a timeout
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, output[-4000:]
    return output


def test_torchrun_trains_each_rank_on_its_own_images_and_rank_0_alone_writes(
    cli_env, s3_server, bucket, tmp_path
):
    client = s3_client(s3_server.endpoint_url)
    # Every PUT kept as a version of its key: a second writer leaves a second version.
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    output = Location(
        f"s3://{bucket}/out",
        endpoint_url=s3_server.endpoint_url,
        key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    write_clean_bucket(tmp_path / "bucket", 40)
    manifest = run_pipeline(
        Location(str(tmp_path / "bucket")), output, policy="max:5", until="manifest"
    ).manifest_version
    rows, _ = load_manifest(output, manifest)
    train_ids = rows.filter(pc.equal(rows["split"], "train"))["image_id"].to_pylist()
    # 16 images a rank, two batches of 8: no rank pads its half, no batch is dropped.
    assert len(train_ids) == 32

    torchrun = Path(sys.executable).with_name("torchrun")  # beside bincount, as the docs say
    # --standalone: the rendezvous on a free port, so parallel test workers never collide.
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "flows.cli",
        "train",
        "--arch=mobilenet_v3_small",
        "--image-size=32",
        "--batch-size=8",
        f"--epochs={EPOCHS}",
        "--device=cpu",
    ]
    env = {**cli_env(output=output.url), "OMP_NUM_THREADS": "1"}
    log = _torchrun(command, env, timeout_s=480)  # 30-40 s on 2 busy cores

    shares = [(int(r), int(e), int(n), int(of), f) for r, e, n, of, f in SHARE.findall(log)]
    assert sorted((rank, epoch) for rank, epoch, *_ in shares) == [
        (rank, epoch) for rank in (0, 1) for epoch in range(1, EPOCHS + 1)
    ], log[-4000:]
    for epoch in range(1, EPOCHS + 1):
        (_, _, n0, of0, first), (_, _, n1, of1, second) = sorted(s for s in shares if s[1] == epoch)
        assert (n0, n1, of0, of1) == (16, 16, 32, 32)
        assert first != second  # different images
        # Together each image once: the fingerprints add up to the train split's.
        assert (int(first, 16) + int(second, 16)) % 2**64 == _fingerprint(train_ids)

    (model,) = list_models(output)
    version = model["version"]
    lineage = json.loads(output.read_bytes(f"models/{version}/lineage.json"))
    assert lineage["world_size"] == 2 and lineage["device"] == "cpu"
    assert lineage["manifest_version"] == manifest
    written = Counter(
        v["Key"]
        for v in client.list_object_versions(Bucket=bucket, Prefix="out/models/")["Versions"]
    )
    # One writer: every file of the model once, its checkpoint once an epoch.
    assert written == {
        **{
            f"out/models/{version}/{name}": 1
            for name in (
                "model.pt",
                "config.json",
                "metrics.json",
                "lineage.json",
                "_complete.json",
            )
        },
        f"out/models/{version}/checkpoint.pt": EPOCHS,
    }
    cache = Counter(
        v["Key"]
        for v in client.list_object_versions(Bucket=bucket, Prefix="out/cache/")["Versions"]
    )
    assert cache and set(cache.values()) == {1}  # rank 0 built the image cache, once
