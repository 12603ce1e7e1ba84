"""The operator's view of the quarantine and pending objects, and replay: a verdict of the
platform's own limit, replayed after the limit is raised, is read again by the next run; one
that fails the same way again is quarantined once more, never twice."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pyarrow.compute as pc
import pytest

from bincount.core.limits import ImageLimits, MetadataLimits
from bincount.core.pending import read_pending
from bincount.core.replay import quarantine_view, replay_quarantine
from bincount.core.storage import Location
from bincount.core.tables import part_names, read_table
from tests.builders import jpeg_bytes, write_clean_bucket

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
BIG = ("00302", "00304")  # 1280 x 960: 19,200 pixels at the scoring's draft scale


def _quarantine(output: Location, stage: str) -> list[tuple[str, str]]:
    table = read_table(output, "quarantine")
    table = table.filter(pc.equal(table.column("stage"), stage))
    columns = (table.column("image_id").to_pylist(), table.column("reason_code").to_pylist())
    return sorted(zip(*columns, strict=True))


def _stage_pending(output: Location) -> list[tuple[str, str, str, int]]:
    return sorted(
        (r["stage"], r["image_id"], r["reason_code"], r["tries"])
        for r in read_pending(output).to_pylist()
    )


# -- through the flows and the CLI: after raising max_image_pixels, the replayed photos score ----
@pytest.fixture
def night(trained, tmp_path, monkeypatch, settings_env) -> dict:
    """Five new bins (two with photos past a lowered ``max_image_pixels``) and an output with
    the trained champion; the lowered limit set for the runs."""
    local = tmp_path / "bucket"
    write_clean_bucket(local, 5, start=300)
    for image_id in BIG:
        (local / "bin-images" / f"{image_id}.jpg").write_bytes(jpeg_bytes(1280, 960))
    shutil.copytree(trained / "out", tmp_path / "out")
    monkeypatch.setenv("BINCOUNT_MAX_IMAGE_PIXELS", "4000")
    return {"source": str(local), "output": str(tmp_path / "out")}


def test_replayed_photos_are_quarantined_once_again_then_scored_when_the_limit_is_raised(
    prefect_api, night, monkeypatch, capsys
):
    from bincount.core.settings import get_settings
    from flows.cli import console
    from flows.quarantine import quarantine
    from flows.score import score

    source, output = night["source"], night["output"]
    location = Location(output)
    get_settings.cache_clear()
    first = score(source=source, output=output, batch_size=4)
    assert (first["scored"], first["quarantined"]) == (3, 2)
    quarantined = [(i, "image_too_many_pixels") for i in BIG]
    assert _quarantine(location, "score") == quarantined

    view = quarantine(output=output)
    assert view["replayed"] is None and view["replays"] == []
    counts = {(g["table"], g["stage"], g["reason_code"]): g["objects"] for g in view["groups"]}
    assert counts[("quarantine", "score", "image_too_many_pixels")] == 2

    # Replayed with the limit unchanged: read again, quarantined again, one row each.
    assert (
        console(["quarantine", "--output", output, "--replay-reason", "image_too_many_pixels"]) == 0
    )
    printed = capsys.readouterr().out
    assert printed.startswith("replayed 2 objects (score/image_too_many_pixels: 2)")
    assert _quarantine(location, "score") == []
    assert _stage_pending(location) == [
        ("score", i, "replayed_image_too_many_pixels", 0) for i in BIG
    ]
    again = score(source=source, output=output, batch_size=4)
    assert (again["scored"], again["quarantined"], again["already_scored"]) == (0, 2, 3)
    assert _quarantine(location, "score") == quarantined  # once more, not twice
    assert _stage_pending(location) == []

    # The limit raised, replayed by stage: the next night scores them, each photo once.
    monkeypatch.delenv("BINCOUNT_MAX_IMAGE_PIXELS")
    get_settings.cache_clear()
    assert console(["quarantine", "--output", output, "--replay-stage", "score"]) == 0
    capsys.readouterr()
    fixed = score(source=source, output=output, batch_size=4)
    assert (fixed["scored"], fixed["quarantined"]) == (2, 0)
    scores = read_table(location, "scores")
    ours = scores.filter(pc.match_substring(scores.column("image_uri"), source))
    assert sorted(ours.column("image_id").to_pylist()) == [f"{n:05d}" for n in range(300, 305)]
    assert _quarantine(location, "score") == [] and _stage_pending(location) == []

    # The view lists both replays, newest first; the CLI prints it as a table.
    assert console(["quarantine", "--output", output]) == 0
    text = capsys.readouterr().out
    assert "replays (newest first):" in text
    replays = quarantine_view(location).replays
    assert [(r["stage"], r["reason_code"], r["objects"]) for r in replays] == [
        ("score", "image_too_many_pixels", 2)
    ] * 2
    assert replays[0]["replayed_at"] >= replays[1]["replayed_at"]


def test_a_replay_naming_nothing_quarantined_is_refused_in_one_line(
    prefect_api, settings_env, cli_env, tmp_path, capsys
):
    import subprocess

    from bincount.data.ingest import ingest_metadata
    from bincount.testing.processes import bincount_command
    from flows.cli import console

    output = str(tmp_path / "out")
    write_clean_bucket(tmp_path / "bucket", 3)
    small = MetadataLimits(max_bytes=10)
    ingest_metadata(Location(str(tmp_path / "bucket")), Location(output), limits=small)
    said = []
    for argv, message in [
        (["--replay-reason", "no_such_code"], "Expected quarantined objects with reason "),
        (["--replay-stage", "scoring"], "Expected a stage to replay among ingest, images, score"),
        (["--replay-stage", "validate"], "run `bincount validate` again instead"),
        (["--replay-reason", "read_denied"], "a fault of reading is never quarantined"),
    ]:
        assert console(["quarantine", "--output", output, *argv]) == 1
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("bincount quarantine: Expected") and message in last, last
        said.append(last)
    assert said[0].endswith("but the quarantine there holds ingest/too_large: 3")
    assert _quarantine(Location(output), "ingest") == [(f"0000{n}", "too_large") for n in (1, 2, 3)]

    # As an operator runs it: exit status 1, the sentence last, no traceback, nothing printed.
    result = subprocess.run(
        bincount_command("quarantine", "--output", output, "--replay-reason", "no_such_code"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == said[0]


# -- the library: ingest and the training image cache -------------------------------------------
def test_replayed_metadata_is_ingested_once_after_the_limit_is_raised(tmp_path):
    from bincount.data.ingest import ingest_metadata

    write_clean_bucket(tmp_path / "bucket", 4)
    source, output = Location(str(tmp_path / "bucket")), Location(str(tmp_path / "out"))
    small = MetadataLimits(max_bytes=10)
    first = ingest_metadata(source, output, limits=small, chunk_size=3)
    assert (first.ingested, first.quarantined) == (0, 4)

    with pytest.raises(ValueError, match=r"reason 'bad_json' .* holds ingest/too_large: 4"):
        replay_quarantine(output, reason="bad_json", run_id="r0", now=NOW)
    replay_quarantine(output, stage="ingest", reason="too_large", run_id="r1", now=NOW)
    assert [(r[0], r[2]) for r in _stage_pending(output)] == [("ingest", "replayed_too_large")] * 4
    again = ingest_metadata(source, output, limits=small, chunk_size=3)
    assert (again.already_ingested, again.quarantined) == (0, 4)
    assert len(_quarantine(output, "ingest")) == 4  # once more, not twice
    assert _stage_pending(output) == []

    later = NOW.replace(hour=13)
    outcome = replay_quarantine(output, stage="ingest", run_id="r2", now=later)
    assert outcome.counts == {("ingest", "too_large"): 4}
    # Replayed whole, the stage's parts stay with no rows: the table is still there to read.
    assert len(part_names(output, "quarantine")) == 2 and _quarantine(output, "ingest") == []
    fixed = ingest_metadata(source, output, chunk_size=3)
    assert (fixed.ingested, fixed.quarantined) == (4, 0)
    bins = read_table(output, "bins")
    assert sorted(bins.column("image_id").to_pylist()) == ["00001", "00002", "00003", "00004"]
    rerun = ingest_metadata(source, output, chunk_size=3)
    assert (rerun.already_ingested, rerun.ingested) == (4, 0)
    view = quarantine_view(output)
    assert view.groups == []
    assert [(r["run_id"], r["objects"], r["replayed_at"]) for r in view.replays] == [
        ("r2", 4, later),
        ("r1", 4, NOW),
    ]


def test_a_replayed_image_cache_shard_is_decoded_again_by_the_next_build(tmp_path):
    from bincount.images.cache import build_image_cache
    from tests.test_chunks import _cache_bucket

    source, manifest = _cache_bucket(tmp_path, 7)  # 00005 is not an image
    big = tmp_path / "bucket" / "bin-images" / "00001.jpg"
    big.write_bytes(jpeg_bytes(1280, 960))
    output = Location(str(tmp_path / "out"))
    build = dict(manifest_version="m1", size=16, shard_size=3, workers=1)
    low = build_image_cache(source, output, manifest, limits=ImageLimits(max_pixels=4000), **build)
    assert (low.images, low.quarantined) == (5, 2)
    assert _quarantine(output, "images") == [
        ("00001", "image_too_many_pixels"),
        ("00005", "undecodable_image"),
    ]

    outcome = replay_quarantine(
        output, stage="images", reason="image_too_many_pixels", run_id="r1", now=NOW
    )
    assert (outcome.objects, outcome.uncommitted_shards) == (1, 1)
    assert not output.exists("cache/m1/16/_complete.json")
    rebuilt = build_image_cache(source, output, manifest, **build)
    assert (rebuilt.created, rebuilt.images, rebuilt.quarantined) == (True, 6, 1)
    assert _quarantine(output, "images") == [("00005", "undecodable_image")]
    assert _stage_pending(output) == []
