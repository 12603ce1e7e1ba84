"""Scoring end to end: a champion trained on real JPEGs scores new bins once, through the flow
(with its artifact), after a kill, from a real S3 endpoint, and as analysts read it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from bincount.contracts import table_contract
from bincount.ingest import ingest_metadata
from bincount.scoring import plan_scoring, score_images
from bincount.storage import Location
from bincount.tables import read_table
from bincount.testing.faultproxy import fault_proxy
from bincount.testing.s3server import upload_tree
from tests.builders import jpeg_bytes, write_clean_bucket
from tests.test_flows import _artifacts


@pytest.fixture
def workdir(trained, tmp_path) -> Path:
    """A private copy of the trained bucket and output, with new bins arrived since."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    bucket = tmp_path / "bucket"
    write_clean_bucket(bucket, 12, start=200)  # new bins with metadata
    (bucket / "bin-images" / "00203.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (bucket / "bin-images" / "0777.jpg").write_bytes(jpeg_bytes(shade=40))  # no metadata
    (bucket / "bin-images" / "README.txt").write_text("not an image")
    return tmp_path


def _scores(output: Path):
    return read_table(Location(str(output)), "scores")


def _image_ids(bucket: Path) -> list[str]:
    return sorted(p.stem for p in (bucket / "bin-images").glob("*.jpg"))


def test_scores_follow_the_contract_and_the_record(workdir):
    source, output = Location(str(workdir / "bucket")), Location(str(workdir / "out"))
    ingest_metadata(source, output)
    summary = score_images(source, output, chunk_size=16, batch_size=8, min_confidence=0.3)

    scores = _scores(workdir / "out")
    assert scores.schema.equals(table_contract("scores").schema, check_metadata=False)
    ids = _image_ids(workdir / "bucket")
    scored = sorted(scores.column("image_id").to_pylist())
    assert scored == sorted(set(ids) - {"00203"})  # every decodable image, once
    assert summary.scored == len(scored) and summary.quarantined == 1
    assert summary.listed == len(ids) + 1 and summary.not_images == 1
    assert "0777" in scored and "777" not in scored  # ids are strings

    today = f"{datetime.now(UTC):%Y-%m-%d}"
    assert {p.parent.name for p in (workdir / "out" / "scores").rglob("part-*")} == {
        f"scored_date={today}"
    }
    recorded = {
        r["image_id"]: r["expected_quantity"] for r in read_table(output, "bins").to_pylist()
    }
    for row in scores.to_pylist():
        probabilities = np.array(row["count_probabilities"])
        assert len(probabilities) == 6 and abs(probabilities.sum() - 1) < 1e-4
        assert row["confidence"] == pytest.approx(probabilities[row["predicted_count"]])
        assert row["expected_quantity"] == recorded.get(row["image_id"])
        if row["expected_quantity"] is None:
            assert row["discrepancy"] is None
        else:
            assert row["discrepancy"] == (row["predicted_count"] != row["expected_quantity"])
        assert row["needs_review"] == (bool(row["discrepancy"]) or row["confidence"] < 0.3)
        assert row["image_uri"] == str(workdir / "bucket" / "bin-images" / f"{row['image_id']}.jpg")
    assert summary.discrepancies == sum(bool(r) for r in scores.column("discrepancy").to_pylist())
    assert summary.unknown_expected == 1  # 0777

    quarantine = read_table(output, "quarantine").to_pylist()
    rejected = [(r["stage"], r["image_id"], r["reason_code"]) for r in quarantine]
    assert ("score", "00203", "undecodable_image") in rejected
    review = summary.review
    assert review and all(row["link"].startswith("file://") for row in review)
    gaps = [
        abs(r["predicted_count"] - r["expected_quantity"])
        for r in review
        if r["expected_quantity"] is not None
    ]
    assert gaps == sorted(gaps, reverse=True)  # the largest disagreements first

    again = score_images(source, output)
    assert again.scored == 0 and again.quarantined == 0
    assert again.already_scored == len(ids)  # scored and quarantined images both skipped
    write_clean_bucket(workdir / "bucket", 3, start=500)
    later = score_images(source, output)
    assert later.scored == 3
    assert _scores(workdir / "out").num_rows == len(scored) + 3


def test_a_chunk_without_its_scores_part_is_discarded_and_scored_again(workdir):
    source, output = Location(str(workdir / "bucket")), Location(str(workdir / "out"))
    first = score_images(source, output, chunk_size=10, batch_size=8)
    # A kill between a chunk's two writes: its quarantine part landed, its scores part did not.
    (quarantined,) = (workdir / "out" / "quarantine" / "stage=score").glob("part-*.parquet")
    (uncommitted,) = (workdir / "out" / "scores").rglob(quarantined.name)
    uncommitted.unlink()
    plan = plan_scoring(source, output, model_version=first.model_version, chunk_size=10)
    assert plan.discarded_orphan_parts == 1
    again = score_images(source, output, chunk_size=10)
    assert again.quarantined == 1 and again.scored == 10 - 1
    assert len(list((workdir / "out" / "quarantine" / "stage=score").glob("part-*"))) == 1
    scores = _scores(workdir / "out")
    assert scores.num_rows == len(set(scores.column("image_id").to_pylist())) == first.scored


KILLABLE_SCORING = """
import sys
from bincount.scoring import score_images
from bincount.storage import Location
source = Location(sys.argv[1], endpoint_url=sys.argv[2], anonymous=True)
score_images(source, Location(sys.argv[3]), chunk_size=20, batch_size=4, concurrency=2)
"""


def test_a_killed_scoring_run_rerun_leaves_no_duplicate_and_no_gap(
    trained, s3_server, bucket, tmp_path
):
    root = tmp_path / "bucket"
    ids = write_clean_bucket(root, 240, start=1000)
    upload_tree(s3_server.endpoint_url, bucket, root)
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    # 30 ms per image and 2 in flight: 12 chunks over several seconds, so the kill lands midway.
    with fault_proxy(s3_server.endpoint_url, latency_ms=30) as proxy:
        process = subprocess.Popen(
            [sys.executable, "-c", KILLABLE_SCORING, f"s3://{bucket}", proxy.endpoint_url, str(out)]
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.rglob("scores/*/part-*"))) < 2:
            assert process.poll() is None, "scoring ended before the kill"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        committed = len(list(out.rglob("scores/*/part-*")))
        assert 2 <= committed < 12, "the kill should land midway"

        source = Location(f"s3://{bucket}", endpoint_url=proxy.endpoint_url, anonymous=True)
        summary = score_images(source, Location(str(out)), chunk_size=20, batch_size=16)

    assert summary.already_scored >= 40
    scores = _scores(out)
    assert sorted(scores.column("image_id").to_pylist()) == ids  # no duplicate, no gap
    assert {uri.split("/")[2] for uri in scores.column("image_uri").to_pylist()} == {bucket}
    assert not [p for p in out.rglob(".*") if p.is_file()], "no temporary file is left"


def test_score_flow_on_s3_with_artifact_and_analyst_reads(
    prefect_api, settings_env, workdir, s3_server, bucket
):
    import duckdb
    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from bincount.testing.s3server import create_public_bucket
    from flows.score import score

    upload_tree(s3_server.endpoint_url, bucket, workdir / "bucket")
    output = f"s3://{bucket}-out"
    create_public_bucket(s3_server.endpoint_url, f"{bucket}-out")
    # The output (tables and the registry with its champion) moves to S3.
    upload_tree(s3_server.endpoint_url, f"{bucket}-out", workdir / "out")

    result = score(source=f"s3://{bucket}", output=output, batch_size=8)
    assert result["scored"] == len(_image_ids(workdir / "bucket")) - 1
    assert result["quarantined"] == 1
    assert result["unknown_expected"] == 1  # the metadata was ingested first, but 0777 has none
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"score {output}"))
        )
    artifacts = _artifacts(runs[0].id)
    report = artifacts["scoring-summary"]
    assert f"| scored now | {result['scored']:,} |" in report
    assert f"{s3_server.endpoint_url}/{bucket}/bin-images/" in report  # links to the images

    again = score(source=f"s3://{bucket}", output=output)
    assert again["scored"] == 0 and again["already_scored"] == result["scored"] + 1

    local = workdir / "analyst"
    from bincount.testing.s3server import s3_client

    client = s3_client(s3_server.endpoint_url)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=f"{bucket}-out"):
        for obj in page.get("Contents", []):
            if obj["Key"].startswith("scores/"):
                target = local / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(f"{bucket}-out", obj["Key"], str(target))
    frame = pd.read_parquet(local / "scores")
    assert len(frame) == result["scored"] and frame["needs_review"].sum() == result["needs_review"]
    dataset = ds.dataset(local / "scores", partitioning="hive")
    assert dataset.to_table().num_rows == result["scored"]
    ((flagged,),) = duckdb.sql(
        f"select count(*) from read_parquet('{local}/scores/*/*.parquet', hive_partitioning=true) "
        "where discrepancy"
    ).fetchall()
    assert flagged == result["discrepancies"]


def test_predict_prints_counts_for_files_and_s3_urls(trained, s3_server, bucket, capsys):
    from bincount.testing.s3server import upload_public
    from flows.cli import main

    image = trained / "bucket" / "bin-images" / "00001.jpg"
    upload_public(s3_server.endpoint_url, bucket, {"bin-images/00001.jpg": image.read_bytes()})
    missing = trained / "bucket" / "bin-images" / "99999.jpg"
    code = main(
        [
            "predict",
            str(image),
            f"s3://{bucket}/bin-images/00001.jpg",
            str(missing),
            "--output",
            str(trained / "out"),
            "--s3-endpoint-url",
            s3_server.endpoint_url,
        ]
    )
    answers = json.loads(capsys.readouterr().out)
    assert code == 1  # one input failed
    local, remote, failed = answers
    assert local["count"] == remote["count"] and local["probabilities"] == remote["probabilities"]
    assert abs(sum(local["probabilities"]) - 1) < 1e-4
    assert local["confidence"] == pytest.approx(local["probabilities"][local["count"]])
    assert (
        local["model_version"]
        == json.loads((trained / "out" / "models" / "_champion.json").read_text())["version"]
    )
    assert "count" not in failed and failed["error"].startswith("FileNotFoundError")


def test_ingest_and_scoring_fan_out_on_a_local_dask_cluster(
    prefect_api, settings_env, workdir, monkeypatch
):
    from prefect.settings import PREFECT_API_URL

    from bincount.settings import get_settings
    from flows.score import score

    # Worker processes report to the same API as this flow (not to servers of their own).
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    monkeypatch.setenv("BINCOUNT_CHUNK_SIZE", "6")
    get_settings.cache_clear()
    source, output = str(workdir / "bucket"), str(workdir / "out")
    result = score(source=source, output=output, batch_size=4, dask="local:2")

    ids = _image_ids(workdir / "bucket")
    assert result["scored"] == len(ids) - 1 and result["quarantined"] == 1
    assert len(result["parts"]) == -(-len(ids) // 6)
    assert len(result["workers"]) == 2  # both worker processes scored chunks
    assert all(not w.endswith(f":{os.getpid()}") for w in result["workers"])
    scores = _scores(workdir / "out")
    assert sorted(scores.column("image_id").to_pylist()) == sorted(set(ids) - {"00203"})
    bins = read_table(Location(output), "bins")
    assert bins.num_rows == len(set(bins.column("image_id").to_pylist())) == 40 + 12


@pytest.mark.real_data
def test_real_abid_photos_are_scored_against_their_recorded_quantity(
    shared_abid, trained, tmp_path
):
    shutil.copytree(trained / "out", tmp_path / "out")
    source, output = Location(str(shared_abid / "sample")), Location(str(tmp_path / "out"))
    ingest_metadata(source, output, chunk_size=500)
    summary = score_images(source, output, chunk_size=500)

    photos = sorted(p.stem for p in (shared_abid / "sample" / "bin-images").glob("*.jpg"))
    assert summary.scored + summary.quarantined == len(photos) == 1304
    assert summary.quarantined == 0  # real ABID JPEGs all decode
    recorded = {
        p.stem: json.loads(p.read_bytes())["EXPECTED_QUANTITY"]
        for p in (shared_abid / "sample" / "metadata").glob("*.json")
    }
    rows = [
        r for r in _scores(tmp_path / "out").to_pylist() if r["image_uri"].startswith(source.uri())
    ]
    assert sorted(r["image_id"] for r in rows) == photos  # "121" and "00121" stay apart
    for row in rows:
        assert row["expected_quantity"] == recorded[row["image_id"]]
        assert row["discrepancy"] == (row["predicted_count"] != recorded[row["image_id"]])
    # The tiny champion predicts at most 5; bins recorded above that are discrepancies.
    assert summary.discrepancies >= sum(1 for q in recorded.values() if q > 5)
