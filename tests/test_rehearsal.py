"""bench/rehearsal.py end to end at a small size: the four ``bincount ingest`` commands, each in
its own process, against the session's moto server and Prefect API."""

from __future__ import annotations

import pytest

from bench import rehearsal
from bincount.testing.s3server import s3_client

OBJECTS = 300


def test_the_quick_rehearsal_ingests_reruns_fails_denied_and_recovers_the_same_bins(
    prefect_api, s3_server, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    run = rehearsal.rehearse(s3_server.endpoint_url, PREFECT_API_URL.value(), OBJECTS, tmp_path)

    steps = {step.name: step for step in run.steps}
    assert [(name, step.exit_code) for name, step in steps.items()] == [
        ("clean", 0),
        ("rerun", 0),
        ("denied", 1),
        ("fixed (signed reads)", 0),
    ]
    assert steps["clean"].result["ingested"] == steps["fixed (signed reads)"].result["ingested"]
    assert steps["rerun"].result["ingested"] == 0
    assert steps["rerun"].result["already_ingested"] == OBJECTS
    assert "read_denied" in steps["denied"].error and "--source-anonymous" in steps["denied"].error
    assert run.denied_pending == OBJECTS  # one chunk, every object of it left pending
    assert run.clean_bins == run.fixed_bins and run.clean_bins[0] == OBJECTS
    # Keys as ABID names them: five digits below 100000, six above.
    pages = s3_client(s3_server.endpoint_url).get_paginator("list_objects_v2")
    listed = [o["Key"] for page in pages.paginate(Bucket=rehearsal.CLEAN) for o in page["Contents"]]
    stems = [key.removeprefix("metadata/").removesuffix(".json") for key in listed]
    assert len(stems) == OBJECTS
    assert all(stem == f"{int(stem):05d}" for stem in stems)
    assert {len(stem) for stem in stems} == {5, 6}
    assert max(step.peak_rss for step in run.steps) < rehearsal.RSS_LIMIT_MB * rehearsal.MB
    table = rehearsal.report(run, 1.0)
    assert f"clean {OBJECTS} rows, fixed {OBJECTS} rows" in table and "(equal)" in table


def test_the_rehearsal_refuses_a_size_outside_abids_ids():
    with pytest.raises(SystemExit, match=r"Expected --objects in 1\.\.535234 .* but got 0 and 16"):
        rehearsal.main(["--objects", "0"])
