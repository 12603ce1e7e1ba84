"""Scoring end to end: a champion trained on real JPEGs scores new bins once, through the flow
(with its artifact), after a kill, from a real S3 endpoint, and as analysts read it."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bincount.core.contracts import table_contract
from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.ingest import ingest_metadata
from bincount.nightly.plan import plan_scoring
from bincount.nightly.scorer import load_scorer
from bincount.nightly.scoring import score_chunk, score_images
from bincount.reports.scoring import scoring_markdown
from bincount.review.queue import decide_queue
from bincount.review.ranking import ReviewPolicy
from bincount.testing.processes import bincount_command, kill_midway
from bincount.testing.proxycontrol import fault_proxy
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
    policy = ReviewPolicy(budget_percent=20, max_p_recorded=0.5)
    summary = score_images(source, output, chunk_size=16, batch_size=8, review=policy)

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
    assert max(recorded.values()) > 3  # records beyond the model's exact range (0..3)
    rows = scores.to_pylist()
    for row in rows:
        probabilities = np.array(row["count_probabilities"])
        assert len(probabilities) == 5 and abs(probabilities.sum() - 1) < 1e-4  # 0..3, "4+"
        assert row["confidence"] == pytest.approx(probabilities[row["predicted_count"]])
        assert row["predicted_overflow"] == (row["predicted_count"] == 4)
        record = recorded.get(row["image_id"])
        assert row["expected_quantity"] == record
        if record is None:
            assert row["discrepancy"] is None and row["p_recorded"] is None
            assert row["review_rank"] is None and row["needs_review"] is False
            continue
        # A record above 3 is judged by the "more than 3" class, never flagged by construction.
        assert row["p_recorded"] == pytest.approx(probabilities[min(record, 4)])
        assert row["discrepancy_score"] == pytest.approx(
            -np.log10(max(row["p_recorded"], 1e-6)), rel=1e-5
        )
        expected_disagreement = (
            record <= 3 if row["predicted_overflow"] else row["predicted_count"] != record
        )
        assert row["discrepancy"] == expected_disagreement
        assert row["image_uri"] == str(workdir / "bucket" / "bin-images" / f"{row['image_id']}.jpg")
    assert summary.discrepancies == sum(bool(r) for r in scores.column("discrepancy").to_pylist())
    assert summary.unknown_expected == 1  # 0777

    # The night's queue: every judged bin ranked from the least likely record, the flags within
    # the budget and the evidence threshold, the queue dataset equal to the flagged rows.
    judged = sorted(
        (r for r in rows if r["p_recorded"] is not None), key=lambda r: r["review_rank"]
    )
    assert [r["review_rank"] for r in judged] == list(range(1, len(judged) + 1))
    assert [r["p_recorded"] for r in judged] == sorted(r["p_recorded"] for r in judged)
    budget = len(judged) * 20 // 100
    for row in judged:
        assert row["needs_review"] == (row["review_rank"] <= budget and row["p_recorded"] <= 0.5)
    flagged = [r for r in judged if r["needs_review"]]
    assert 0 < len(flagged) <= budget == summary.queue["budget"]
    assert summary.needs_review == len(flagged)
    queue = read_table(output, "review_queue")
    assert queue.schema.equals(table_contract("review_queue").schema, check_metadata=False)
    assert queue.column("image_id").to_pylist() == [r["image_id"] for r in flagged]
    assert queue.column("queued_date").to_pylist()[0].isoformat() == today
    assert not (workdir / "out" / "scores" / "_queues").exists() or not list(
        (workdir / "out" / "scores" / "_queues").iterdir()
    )  # the decision is applied and cleared

    quarantine = read_table(output, "quarantine").to_pylist()
    rejected = [(r["stage"], r["image_id"], r["reason_code"]) for r in quarantine]
    assert ("score", "00203", "undecodable_image") in rejected
    review = summary.review
    assert [r["image_id"] for r in review] == [r["image_id"] for r in flagged]
    for row in review:
        assert row["link"].startswith("file://")
        thumbnail = Image.open(io.BytesIO(base64.b64decode(row["thumbnail"].split(",", 1)[1])))
        assert row["thumbnail"].startswith("data:image/jpeg;base64,") and max(thumbnail.size) <= 96
    markdown = scoring_markdown(summary)
    assert markdown.count("](data:image/jpeg;base64,") == len(review)

    again = score_images(source, output)
    assert again.scored == 0 and again.quarantined == 0 and again.needs_review == 0
    assert again.already_scored == len(ids)  # scored and quarantined images both skipped
    write_clean_bucket(workdir / "bucket", 3, start=500)
    later = score_images(source, output)
    assert later.scored == 3 and later.queue["ranked"] == 3  # tonight's bins alone
    assert _scores(workdir / "out").num_rows == len(scored) + 3


def test_a_run_stopped_before_its_queue_is_ranked_with_the_next_night(workdir):
    source, output = Location(str(workdir / "bucket")), Location(str(workdir / "out"))
    scorer = load_scorer(output)
    plan = plan_scoring(source, output, model_version=scorer.version, chunk_size=100)
    score_chunk(source, output, scorer, plan.chunks[0], batch_size=8)  # then the run dies
    stranded = _scores(workdir / "out")
    assert stranded.column("needs_review").null_count == stranded.num_rows

    write_clean_bucket(workdir / "bucket", 4, start=600)
    night = score_images(source, output, review=ReviewPolicy(budget_percent=50))
    scores = _scores(workdir / "out")
    assert scores.column("needs_review").null_count == 0
    assert night.scored == 4 and night.queue["ranked"] == stranded.num_rows + 4
    assert night.queue["carried_over"] == 1  # the stranded part
    ranks = [r for r in scores.column("review_rank").to_pylist() if r is not None]
    assert sorted(ranks) == list(range(1, len(ranks) + 1))


def test_a_decided_queue_is_applied_by_the_next_run_not_decided_again(workdir):
    source, output = Location(str(workdir / "bucket")), Location(str(workdir / "out"))
    policy = ReviewPolicy(budget_percent=30, max_p_recorded=1.0)
    scorer = load_scorer(output)
    plan = plan_scoring(source, output, model_version=scorer.version, chunk_size=100)
    score_chunk(source, output, scorer, plan.chunks[0], batch_size=8)
    # The run writes its decision, the queue's commit point, and dies before applying it.
    _, decided, decision = decide_queue(output, policy)
    assert _scores(workdir / "out").column("needs_review").null_count == decided.num_rows

    write_clean_bucket(workdir / "bucket", 2, start=700)  # the next night's arrivals
    night = score_images(source, output, review=policy)
    assert night.queue["decisions_applied"] == 1
    assert night.queue["ranked"] == 2  # tonight's bins; last night's were decided already
    scores = _scores(workdir / "out")
    last_night = {r["image_uri"]: r for r in decided.to_pylist()}
    for row in scores.to_pylist():
        if row["image_uri"] in last_night:  # the decision as made, not a new one
            assert row["review_rank"] == last_night[row["image_uri"]]["review_rank"]
            assert row["needs_review"] == last_night[row["image_uri"]]["needs_review"]
    queue = read_table(output, "review_queue")
    tonight = {night.queue["queue_id"]} if night.needs_review else set()
    assert set(queue.column("queue_id").to_pylist()) == {
        decided.column("queue_id")[0].as_py(),
        *tonight,
    }
    assert queue.num_rows == decision.flagged + night.needs_review
    assert not list((workdir / "out" / "scores" / "_queues").glob("*.parquet"))


def test_two_sources_with_the_same_keys_keep_their_own_scores(workdir):
    output = Location(str(workdir / "out"))
    other = workdir / "other-bucket"
    shutil.copytree(workdir / "bucket", other)  # the same keys, bin-images/00001.jpg and on
    first = score_images(Location(str(workdir / "bucket")), output, chunk_size=100)
    second = score_images(Location(str(other)), output, chunk_size=100)
    assert first.scored == second.scored > 0
    uris = _scores(workdir / "out").column("image_uri").to_pylist()
    assert len(uris) == len(set(uris)) == first.scored + second.scored


def test_a_killed_scoring_run_rerun_leaves_no_duplicate_and_no_gap(
    trained, s3_server, bucket, tmp_path, cli_env
):
    """The exactly-once guarantee of the path production runs: ``bincount score`` (the flow,
    ingest first, on the Prefect API) killed with SIGKILL midway, then run again."""
    root = tmp_path / "bucket"
    ids = write_clean_bucket(root, 240, start=1000)
    upload_tree(s3_server.endpoint_url, bucket, root)
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    command = bincount_command(
        "score", "--source", f"s3://{bucket}", "--output", str(out), "--batch-size", "4"
    )
    # 30 ms per image and 2 in flight: 12 chunks over several seconds, so the kill lands midway.
    with fault_proxy(s3_server.endpoint_url, latency_ms=30) as proxy:
        env = cli_env(s3_endpoint_url=proxy.endpoint_url, chunk_size=20, max_concurrency=2)
        committed = kill_midway(
            command, env=env, progress=lambda: len(list(out.rglob("scores/*/part-*")))
        )
        assert 2 <= committed < 12, "the kill should land midway"
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, check=True)

    assert json.loads(rerun.stdout)["already_scored"] >= 40
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

    policy = ReviewPolicy(budget_percent=25, max_p_recorded=1.0)
    result = score(source=f"s3://{bucket}", output=output, batch_size=8, review=policy)
    assert result["scored"] == len(_image_ids(workdir / "bucket")) - 1
    assert 0 < result["needs_review"] <= result["queue"]["budget"]
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
    assert report.count("](data:image/jpeg;base64,") == result["needs_review"]  # thumbnails

    again = score(source=f"s3://{bucket}", output=output)
    assert again["scored"] == 0 and again["already_scored"] == result["scored"] + 1

    local = workdir / "analyst"
    from bincount.testing.s3server import s3_client

    client = s3_client(s3_server.endpoint_url)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=f"{bucket}-out"):
        for obj in page.get("Contents", []):
            if obj["Key"].startswith(("scores/", "review_queue/")):
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
    queue = pd.read_parquet(local / "review_queue").sort_values("review_rank")
    joined = queue.merge(frame, on="image_uri", suffixes=("", "_score"))
    assert len(joined) == len(queue) == result["needs_review"]
    assert (joined["review_rank"] == joined["review_rank_score"]).all()


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

    from bincount.core.settings import get_settings
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
        record = recorded[row["image_id"]]
        overflow = row["predicted_count"] == 4  # the tiny champion's "more than 3"
        assert row["discrepancy"] == (record <= 3 if overflow else row["predicted_count"] != record)
        assert row["p_recorded"] == pytest.approx(row["count_probabilities"][min(record, 4)])
    # The queue holds at most the budget, however weak the model.
    assert summary.needs_review <= summary.queue["budget"] == int(0.10 * len(photos))


def test_the_queue_is_measured_against_the_synthetic_truth(trained, tmp_path):
    from bincount.review.queue import measure_against_truth
    from bincount.synth import synthesize

    shutil.copytree(trained / "out", tmp_path / "out")
    source, output = Location(str(tmp_path / "night")), Location(str(tmp_path / "out"))
    truth = Location(str(tmp_path / "night.truth"))
    arrived = synthesize(source, bins=40, seed=8, max_count=8, mismatch_rate=0.4, truth=truth)
    ingest_metadata(source, output)
    score_images(source, output, review=ReviewPolicy(budget_percent=30, max_p_recorded=0.5))
    measured = measure_against_truth(output, truth, list(arrived.ids))

    truth_rows = {r["image_id"]: r for r in pq.read_table(arrived.truth).to_pylist()}
    rows = [r for r in _scores(tmp_path / "out").to_pylist() if r["p_recorded"] is not None]
    wrong = {
        r["image_id"]
        for r in rows
        if r["expected_quantity"] != truth_rows[r["image_id"]]["true_count"]
    }
    flagged = {r["image_id"] for r in rows if r["needs_review"]}
    assert measured.judged == len(rows) and measured.wrong == len(wrong) > 0
    assert measured.flagged == len(flagged) > 0
    assert measured.flagged_wrong == len(flagged & wrong)
    assert measured.precision == pytest.approx(len(flagged & wrong) / len(flagged))
