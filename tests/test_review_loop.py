"""The review loop through a real Prefect API: a paused review run resumed with verdicts (bad
ones refused with a clear error), verdicts written once, a second resume refused, verdicts from
a file through the CLI, and the next manifest learning from them."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bincount.core.contracts import table_contract
from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.data.manifest import CountPolicy, build_manifest, load_manifest
from bincount.nightly.scoring import score_images
from bincount.review.outcomes import (
    REVIEW_OUTCOMES,
    latest_verdicts,
    pending_entries,
    queue_entries,
    record_outcomes,
)
from bincount.review.precision import queue_precision
from bincount.review.ranking import ReviewPolicy
from bincount.review.verdicts import Decided, Verdict, VerdictError, decide, verdict_model
from bincount.testing.pipeline import run_pipeline
from tests.test_flows import _artifacts


@pytest.fixture
def queued(trained, tmp_path) -> Path:
    """A private copy of the trained bucket and its champion, the bins ingested from the copy,
    validated, in a manifest and scored tonight, half of them queued for review."""
    shutil.copytree(trained / "bucket", tmp_path / "bucket")
    shutil.copytree(trained / "out" / "models", tmp_path / "out" / "models")
    source, output = Location(str(tmp_path / "bucket")), Location(str(tmp_path / "out"))
    run_pipeline(source, output, policy="open:3", until="manifest")
    score_images(source, output, review=ReviewPolicy(budget_percent=50, max_p_recorded=1.0))
    return tmp_path


def _paused_run(output: str, after_pauses: int = 0, timeout: float = 180):
    """The review run of ``output`` once it is paused (for the ``after_pauses + 1``-th time)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["review"]))
            )
        for run in runs:
            if run.parameters.get("output") != output or not run.state.is_paused():
                continue
            if run.state.state_details.pause_key == str(after_pauses + 1):
                return run
        time.sleep(0.2)
    raise AssertionError(f"Expected a paused review run of {output}, but none paused in time")


def _form_text(run, part: str) -> str:
    from prefect.input.actions import read_flow_run_input

    return read_flow_run_input(run.state.state_details.run_input_keyset[part], run.id)


def test_a_paused_review_run_is_resumed_with_verdicts_and_records_them_once(
    prefect_api, settings_env, queued
):
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    from flows.review import review

    output = str(queued / "out")
    shown = pending_entries(Location(output), Location(str(queued / "bucket")), top=3)
    first, second, third = shown
    states = []
    runner = threading.Thread(
        target=lambda: states.append(
            # Minutes to spare for the answers below: each is an API call, slow on a busy machine.
            review(output=output, top=3, reviewer="ana", wait_minutes=5, return_state=True)
        )
    )
    runner.start()
    try:
        run = _paused_run(output)
        description = _form_text(run, "description")
        assert description.count("](data:image/jpeg;base64,") == 3  # every photo inline
        for entry in shown:
            assert f"[{entry.label}](" in description
        schema = _form_text(run, "schema")
        assert "ReviewInput" in json.dumps(schema)

        # Refused by the API against the form's schema: the run stays paused.
        with pytest.raises(RuntimeError, match="minimum of 0"):
            resume_flow_run(
                run.id,
                run_input={"reviewer": "ana", "verdicts": [{"bin": first.label, "counted": -1}]},
            )
        with pytest.raises(RuntimeError, match="'99999' is not one of"):
            resume_flow_run(
                run.id, run_input={"reviewer": "ana", "verdicts": [{"bin": "99999", "counted": 2}]}
            )
        # Accepted by the form but refused by the flow: it pauses again, saying why.
        two_answers = [{"bin": first.label, "counted": 1}, {"bin": first.label, "counted": 2}]
        resume_flow_run(run.id, run_input={"reviewer": "ana", "verdicts": two_answers})
        again = _paused_run(output, after_pauses=1)
        assert (
            f"Expected one answer per bin, but got 2 for bin {first.label}: 1 and 2"
            in _form_text(again, "description")
        )

        corrected = first.expected_quantity + 2
        resume_flow_run(
            run.id,
            run_input={
                "reviewer": "ana",
                "verdicts": [
                    {"bin": first.label, "counted": corrected, "note": "two behind the box"},
                    {"bin": second.label},  # no count: the record is right
                    {"bin": third.label, "counted": third.expected_quantity},
                ],
            },
        )
        runner.join(timeout=180)
    finally:
        runner.join(timeout=1)
    (state,) = states
    assert state.is_completed(), state
    result = state.result()
    assert result["written"] == 3 and result["corrected"] == 1 and result["record_correct"] == 2

    with pytest.raises(NotPausedError):  # a second resume of the same run
        resume_flow_run(run.id, run_input={"reviewer": "bo", "verdicts": [{"bin": first.label}]})

    outcomes = read_table(Location(output), REVIEW_OUTCOMES)
    assert outcomes.schema.equals(table_contract(REVIEW_OUTCOMES).schema, check_metadata=False)
    rows = {row["image_id"]: row for row in outcomes.to_pylist()}
    assert len(rows) == outcomes.num_rows == 3
    assert rows[first.image_id]["verdict"] == "corrected"
    assert rows[first.image_id]["counted_quantity"] == corrected
    assert rows[first.image_id]["note"] == "two behind the box"
    assert rows[second.image_id]["verdict"] == rows[third.image_id]["verdict"] == "record_correct"
    assert rows[second.image_id]["counted_quantity"] == second.expected_quantity
    for entry in shown:
        row = rows[entry.image_id]
        assert row["reviewer"] == "ana" and row["recorded_via"] == "ui"
        assert row["review_run_id"] == str(run.id)
        assert (row["model_version"], row["scored_run_id"], row["queue_id"]) == (
            entry.model_version,
            entry.scored_run_id,
            entry.queue_id,
        )
        assert row["source"] == str(queued / "bucket") and row["image_uri"] == entry.image_uri

    artifacts = _artifacts(run.id)
    assert artifacts["review-sheet"].count("](data:image/jpeg;base64,") == 3
    assert "| record wrong | precision |" in artifacts["review-outcomes"]

    # The next review shows the bins nobody has judged yet.
    later = pending_entries(Location(output), Location(str(queued / "bucket")), top=3)
    assert {e.image_id for e in later}.isdisjoint(rows)


def test_verdicts_from_a_file_are_recorded_once_and_the_next_manifest_learns_them(
    prefect_api, settings_env, queued, capsys
):
    from flows.cli import main

    output, source = Location(str(queued / "out")), Location(str(queued / "bucket"))
    entries = queue_entries(output, source)
    wrong, right, untouched = entries[0], entries[1], entries[2]
    corrected = 7 if wrong.expected_quantity != 7 else 6
    sheet = queued / "verdicts.csv"
    sheet.write_text(
        "bin,counted,reviewer\n"
        f"{wrong.image_id},{corrected},cy\n"
        f"{right.image_uri},,cy\n"  # a photo's URI names the bin too; no count: record right
    )

    bad = queued / "bad.json"
    bad.write_text(json.dumps([{"bin": wrong.image_id, "counted": -2}, {"bin": "99999"}]))
    with pytest.raises(VerdictError) as refused:
        main(["record-verdicts", "--output", output.url, "--verdicts", str(bad)])
    assert refused.value.problems == [
        "Expected a count of 0 or more in row 1, but got -2",
        "Expected a bin of a review queue in row 2, but got '99999'",
    ]
    assert read_table(output, REVIEW_OUTCOMES).num_rows == 0  # nothing of a bad file

    capsys.readouterr()
    assert main(["record-verdicts", "--output", output.url, "--verdicts", str(sheet)]) == 0
    recorded = json.loads(capsys.readouterr().out)
    assert (recorded["written"], recorded["corrected"], recorded["record_correct"]) == (2, 1, 1)
    assert main(["record-verdicts", "--output", output.url, "--verdicts", str(sheet)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["written"] == 0 and len(again["already_recorded"]) == 2  # written once
    rows = read_table(output, REVIEW_OUTCOMES).to_pylist()
    assert len(rows) == 2 and {r["recorded_via"] for r in rows} == {"file"}

    precision = [p.as_dict() for p in queue_precision(output)]
    assert [(p["flagged"], p["reviewed"], p["record_wrong"]) for p in precision] == [
        (len(entries), 2, 1)
    ]
    assert precision[0]["precision"] == 0.5

    policy = CountPolicy.parse("open:3")
    before, before_details = load_manifest(output)
    summary = build_manifest(source, output, policy=policy)
    manifest, details = load_manifest(output, summary.version)
    assert summary.version != before_details.version  # a new manifest: its labels changed
    assert manifest.schema.equals(table_contract("manifest").schema, check_metadata=False)
    labels = {row["image_id"]: row for row in manifest.to_pylist()}
    assert labels[wrong.image_id]["label"] == policy.label(corrected)
    assert labels[wrong.image_id]["label_source"] == "review"
    assert labels[wrong.image_id]["review_verdict"] == "corrected"
    outcome = {r["image_id"]: r["outcome_id"] for r in rows}
    assert labels[wrong.image_id]["review_outcome_id"] == outcome[wrong.image_id]
    assert labels[right.image_id]["label"] == policy.label(right.expected_quantity)
    assert labels[right.image_id]["label_source"] == "record"
    assert labels[right.image_id]["review_verdict"] == "record_correct"
    assert labels[untouched.image_id]["label_source"] == "record"
    assert labels[untouched.image_id]["review_verdict"] is None
    assert details.labels.model_dump() == {
        "from_records": manifest.num_rows - 1,
        "from_reviews": 1,
        "records_confirmed_by_review": 1,
        "reviewed": 2,
    }
    old = {row["image_id"]: row for row in before.to_pylist()}
    assert {i for i in labels if labels[i]["label"] != old[i]["label"]} <= {wrong.image_id}


def test_a_manifest_without_verdicts_keeps_its_version(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    output, source = Location(str(tmp_path / "out")), Location(str(tmp_path / "bucket"))
    before = json.loads((tmp_path / "out" / "manifests" / "_latest.json").read_text())["version"]
    assert build_manifest(source, output, policy=CountPolicy.parse("open:3")).version == before


def test_the_latest_verdict_of_a_bin_wins(queued):
    from datetime import UTC, datetime, timedelta

    output, source = Location(str(queued / "out")), Location(str(queued / "bucket"))
    entry = queue_entries(output, source)[0]
    later_night = replace(entry, queue_id="a-later-queue")  # the bin flagged again
    start = datetime(2026, 11, 20, 9, tzinfo=UTC)
    record_outcomes(output, [Decided(entry, 9, "ana")], run_id="r1", via="ui", clock=lambda: start)
    record_outcomes(
        output,
        [Decided(later_night, entry.expected_quantity, "bo")],
        run_id="r2",
        via="file",
        clock=lambda: start + timedelta(days=1),
    )
    latest = latest_verdicts(output)[(entry.source, entry.image_id)]
    assert latest["verdict"] == "record_correct"
    assert latest["counted_quantity"] == entry.expected_quantity
    # The same entry again (a retry of the same write, or another run) is not written twice.
    retry = record_outcomes(output, [Decided(entry, 9, "ana")], run_id="r1", via="ui")
    other = record_outcomes(output, [Decided(entry, 4, "cy")], run_id="r3", via="ui")
    assert retry.written == 1 and other.written == 0 and other.already_recorded == [entry.label]
    assert read_table(output, REVIEW_OUTCOMES).num_rows == 2


def test_verdicts_are_checked_against_the_bins_shown(queued):
    entries = pending_entries(
        Location(str(queued / "out")), Location(str(queued / "bucket")), top=2
    )
    form = verdict_model([e.label for e in entries])
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        form(bin=entries[0].label, counted=-1)
    with pytest.raises(ValueError, match="Input should be"):
        form(bin="99999", counted=1)
    with pytest.raises(VerdictError) as refused:
        decide(entries, [Verdict(bin="99999", counted=1)], reviewer="")
    assert refused.value.problems == [
        "Expected the reviewer's name, but got none",
        f"Expected a bin of the ones shown ({entries[0].label}, {entries[1].label}), but got "
        "'99999'",
    ]
    same = [Verdict(bin=entries[0].label, counted=3), Verdict(bin=entries[0].label, counted=3)]
    (decided,) = decide(entries, same, reviewer="ana")  # an identical repeat counts once
    assert decided.counted == 3
