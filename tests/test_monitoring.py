"""Drift monitoring: the statistic against a reference computation, a night's row against the
champion's test set and recent nights, and the alert as a real event read back from a real
Prefect API (a clean night through the score flow raises none, a drifted night exactly one)."""

from __future__ import annotations

import io
import math
import re
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bincount.core.contracts import table_contract
from bincount.core.storage import Location
from bincount.core.tables import SCORES, read_table, write_part
from bincount.model.registry import champion, read_model_record
from bincount.nightly.monitoring import (
    DRIFT_EVENT,
    MONITORING,
    DriftPolicy,
    histogram,
    load_reference,
    monitor_night,
    population_stability_index,
)
from bincount.nightly.scoring import score_table
from bincount.review.queue import queue_reviews
from bincount.review.ranking import ReviewPolicy
from tests.builders import write_clean_bucket

POLICY = DriftPolicy(min_bins=20)


def _psi_reference(p_counts, q_counts) -> float:
    """PSI written out term by term, as a textbook gives it (empty classes at 0.0001)."""
    total = 0.0
    for p, q in zip(p_counts, q_counts, strict=True):
        p_share = max(p / sum(p_counts), 1e-4)
        q_share = max(q / sum(q_counts), 1e-4)
        total += (p_share - q_share) * math.log(p_share / q_share)
    return total


@pytest.mark.parametrize("seed", range(6))
def test_psi_matches_a_term_by_term_computation(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 14))
    night = [*rng.integers(0, 60, classes - 1).tolist(), 0]  # an empty class among them
    reference = rng.integers(0, 600, classes).tolist()
    assert population_stability_index(night, reference) == pytest.approx(
        _psi_reference(night, reference), rel=1e-12
    )
    assert population_stability_index(reference, reference) == pytest.approx(0.0, abs=1e-12)


def test_psi_refuses_unlike_histograms():
    with pytest.raises(ValueError, match="Expected two histograms over the same classes"):
        population_stability_index([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="Expected non-negative bin counts"):
        population_stability_index([1, -2], [1, 2])


def test_sampling_alone_stays_far_below_the_threshold():
    """Nights drawn from the test set's own distribution: PSI near (classes - 1)(1/n + 1/m)."""
    rng = np.random.default_rng(1)
    shares = np.array([0.05, 0.12, 0.16, 0.15, 0.12, 0.09, 0.07, 0.05, 0.04, 0.03, 0.02, 0.10])
    reference = histogram(rng.choice(12, 600, p=shares).tolist(), 12)
    values = [
        population_stability_index(histogram(rng.choice(12, 400, p=shares).tolist(), 12), reference)
        for _ in range(200)
    ]
    assert np.mean(values) == pytest.approx(11 * (1 / 400 + 1 / 600), rel=0.35)
    assert max(values) < DriftPolicy().max_psi / 2


# -- nights against the champion ---------------------------------------------------------------
@pytest.fixture
def output(trained, tmp_path) -> Location:
    """A private copy of the trained output (its champion evaluated on a test split)."""
    shutil.copytree(trained / "out", tmp_path / "out")
    return Location(str(tmp_path / "out"))


def _night(
    output: Location,
    run_id: str,
    probabilities: np.ndarray,
    *,
    records: list[int],
    at: datetime,
    version: str | None = None,
) -> None:
    """Write a night's scores as the scoring run ``run_id`` would (score_table, one committed
    part) and rank its queue."""
    version = version or champion(output).version
    config = read_model_record(output, version).config
    keys = [f"bin-images/{run_id}-{i:05d}.jpg" for i in range(len(probabilities))]
    table = score_table(
        Location("/bucket"),
        keys,
        probabilities,
        probabilities.argmax(1),
        expected={key.split("/")[1][:-4]: r for key, r in zip(keys, records, strict=True)},
        max_count=config.max_count,
        open_top=probabilities.shape[1] == config.max_count + 2,
        model_version=version,
        run_id=run_id,
        scored_at=at,
    )
    write_part(output, SCORES, run_id, table, partition={"scored_date": f"{at:%Y-%m-%d}"})
    queue_reviews(output, ReviewPolicy(), run_id=run_id)


def _like_reference(output: Location, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Probabilities and records resampled from the champion's own test-set predictions."""
    version = champion(output).version
    set_id = champion(output).evaluation_set.id
    table = output.read_parquet(f"models/{version}/evaluations/{set_id}-predictions.parquet")
    rows = np.random.default_rng(seed).integers(0, table.num_rows, n)
    probabilities = np.array(table.column("count_probabilities").to_pylist(), np.float32)[rows]
    labels = [table.column("label").to_pylist()[i] for i in rows]
    return probabilities, labels


def _dark(n: int, classes: int) -> np.ndarray:
    """What a model that sees little in dark photos says: mostly "empty", and unsure."""
    probabilities = np.full((n, classes), 0.6 / (classes - 1), np.float32)
    probabilities[:, 0] = 0.4
    return probabilities


def test_a_night_like_the_test_set_is_no_drift_and_a_dark_one_is(output):
    now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    version = champion(output).version
    reference = load_reference(output, version, ReviewPolicy())
    assert reference is not None and reference.evaluation_set == champion(output).evaluation_set.id
    classes = len(reference.distribution)

    probabilities, records = _like_reference(output, 60, seed=1)
    _night(output, "night-1", probabilities, records=records, at=now)
    clean = monitor_night(
        output,
        run_id="night-1",
        model_version=version,
        review=ReviewPolicy(),
        policy=POLICY,
        clock=lambda: now,
    )
    assert not clean.drift and clean.reasons == []
    assert clean.row["bins"] == 60 and sum(clean.row["predicted_distribution"]) == 60
    assert clean.row["psi_reference"] == pytest.approx(
        _psi_reference(clean.row["predicted_distribution"], reference.distribution)
    )
    assert clean.row["psi_recent"] is None and clean.row["recent_nights"] == 0

    later = now + timedelta(days=1)
    _night(output, "night-2", _dark(60, classes), records=records, at=later)
    dark = monitor_night(
        output,
        run_id="night-2",
        model_version=version,
        review=ReviewPolicy(),
        policy=POLICY,
        clock=lambda: later,
    )
    assert dark.drift
    assert any(r.startswith("PSI against the test set") for r in dark.reasons), dark.reasons
    assert any(r.startswith("PSI against recent nights") for r in dark.reasons), dark.reasons
    assert dark.row["recent_nights"] == 1  # the clean night, pooled
    assert [row["run_id"] for row in dark.history] == ["night-1", "night-2"]

    rows = read_table(output, MONITORING)
    assert rows.schema.equals(table_contract(MONITORING).schema, check_metadata=False)
    assert sorted(rows.column("run_id").to_pylist()) == ["night-1", "night-2"]
    assert sorted((row["run_id"], row["drift"]) for row in rows.to_pylist()) == [
        ("night-1", False),
        ("night-2", True),
    ]

    again = monitor_night(  # a retried task rewrites its own row, never adds one
        output,
        run_id="night-2",
        model_version=version,
        review=ReviewPolicy(),
        policy=POLICY,
        clock=lambda: later,
    )
    assert again.row["recent_nights"] == 1
    assert read_table(output, MONITORING).num_rows == 2


def test_small_nights_are_recorded_not_judged_and_a_new_model_starts_afresh(output):
    now = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    version = champion(output).version
    classes = len(load_reference(output, version, ReviewPolicy()).distribution)
    _night(output, "tiny", _dark(5, classes), records=[0] * 5, at=now)
    tiny = monitor_night(
        output, run_id="tiny", model_version=version, review=ReviewPolicy(), policy=POLICY
    )
    assert not tiny.drift and tiny.row["bins"] == 5 and tiny.row["psi_reference"] > POLICY.max_psi

    # Rows of another model are not this model's recent nights.
    other = monitor_night(
        output, run_id="other", model_version="not-a-model", review=ReviewPolicy(), policy=POLICY
    )
    assert other.reference is None and other.row["bins"] == 0 and not other.drift
    assert other.row["recent_nights"] == 0


# -- through the flows and a real Prefect API --------------------------------------------------
def _drift_events(output: str, *, wait_for: int, timeout: float = 60.0) -> list:
    """``bincount.drift.detected`` events of ``output`` stored by the API, once ``wait_for`` of
    them are in (or the timeout passed)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    prefix = f"bincount.output.{Location(output).uri()}/"
    found: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[DRIFT_EVENT]),
                    resource=EventResourceFilter(id_prefix=[prefix]),
                ),
                limit=50,
            )
        found = page.events
        if len(found) >= wait_for:
            break
        time.sleep(0.5)
    return found


def test_a_clean_night_raises_no_event_and_a_dark_night_exactly_one(
    prefect_api, settings_env, trained, tmp_path
):
    from prefect import flow

    from flows.score import score
    from tasks.monitoring import monitor_drift
    from tasks.runtime import current_run_id
    from tests.test_flows import _artifacts

    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    write_clean_bucket(tmp_path / "bucket", 30, start=300)  # arrivals like the trained-on bins
    output = str(tmp_path / "out")
    drift = DriftPolicy(min_bins=20)

    state = score(source=str(tmp_path / "bucket"), output=output, drift=drift, return_state=True)
    assert state.is_completed(), state
    clean = state.result()
    assert clean["scored"] == 70 and clean["drift"]["drift"] is False  # every bin, the first night
    assert clean["drift"]["psi_reference"] is not None
    artifacts = _artifacts(state.state_details.flow_run_id)
    assert "No drift" in artifacts["drift-monitoring"]
    assert artifacts["drift-monitoring"].count("](data:image/png;base64,") == 2
    assert "](data:image/png;base64," in artifacts["scoring-summary"]

    location = Location(output)
    version = champion(location).version
    classes = len(load_reference(location, version, ReviewPolicy()).distribution)

    @flow(name="dark-night")
    def dark_night() -> bool:
        # The tiny test champion ignores its input; these are the scores a champion that sees
        # the darker photos would write for them, committed as the scoring run's own.
        _night(
            location,
            current_run_id(),
            _dark(40, classes),
            records=[2] * 40,
            at=datetime.now(UTC),
        )
        return monitor_drift(output, version, ReviewPolicy(), drift).drift

    assert dark_night() is True
    # Events reach the API in the order they were emitted: once the dark night's is in, a clean
    # night's would be too. A few seconds more would show a repeat.
    assert len(_drift_events(output, wait_for=1)) == 1
    events = _drift_events(output, wait_for=2, timeout=3)
    assert len(events) == 1, [e.payload for e in events]
    (event,) = events
    assert event.resource.id == f"bincount.output.{location.uri(f'models/{version}')}"
    assert event.payload["model_version"] == version
    assert any(r.startswith("PSI against the test set") for r in event.payload["reasons"])
    assert "flow-run" in {related.role for related in event.related}
    monitored = read_table(location, MONITORING).to_pylist()
    assert sorted(row["drift"] for row in monitored) == [False, True]


def _guide_automation_code() -> str:
    """The Python the operators' drift guide tells them to run to create the Automation."""
    guide = Path(__file__).resolve().parents[1] / "docs" / "operators" / "drift.md"
    found = re.search(
        r"```python\n(from prefect.automations import .*?)```", guide.read_text("utf-8"), re.DOTALL
    )
    assert found, "the drift guide's Automation is gone"
    return found.group(1)


def test_the_guide_automation_is_created_by_the_api_and_covers_the_drift_event(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.server.events.schemas.automations import EventTrigger
    from prefect.server.events.schemas.events import ReceivedEvent

    namespace: dict = {}
    exec(compile(_guide_automation_code(), "drift.md", "exec"), namespace)  # as an operator runs it
    with get_client(sync_client=True) as client:
        created = client.read_automation(namespace["automation"].id)
    assert created.name == "bincount drift" and created.trigger.expect == {DRIFT_EVENT}
    assert created.actions[0].block_document_id == namespace["block_id"]

    # The trigger fires on the event the monitoring emits, whatever the output and model.
    trigger = EventTrigger.model_validate(created.trigger.model_dump())
    event = ReceivedEvent(
        id=uuid.uuid4(),
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": "bincount.output.s3://bucket/out/models/abc123"},
        occurred=datetime.now(UTC),
    )
    assert trigger.covers(event)
    assert not trigger.covers(event.model_copy(update={"event": "bincount.other"}))


def test_darker_synthetic_photos_are_the_same_bins_in_less_light():
    from PIL import ImageStat

    from bincount.synth import make_bin, synthesize

    normal, image, metadata = make_bin(seed=3, ordinal=5, bin_id="00005", max_count=10)
    dark, dark_image, dark_metadata = make_bin(
        seed=3, ordinal=5, bin_id="00005", max_count=10, exposure=0.35
    )
    assert (dark, dark_metadata) == (normal, metadata)  # same bin, same record
    assert make_bin(seed=3, ordinal=5, bin_id="00005", max_count=10, exposure=1.0)[1] == image
    brightness = [
        ImageStat.Stat(Image.open(io.BytesIO(data)).convert("L")).mean[0]
        for data in (image, dark_image)
    ]
    assert brightness[1] == pytest.approx(0.35 * brightness[0], rel=0.1)
    with pytest.raises(ValueError, match=r"Expected exposure in \(0, 4\], but got 0"):
        synthesize(Location("/nowhere"), bins=1, seed=0, exposure=0)


# -- input drift: what the photos look like, whatever the model predicts ----------------------
def _faulty(jpeg: bytes, fault: str) -> bytes:
    """A camera fault applied to a photo: the lamp at a third of its light, a blurred lens, or
    a camera at half the resolution."""
    from bincount.synth import CameraFault

    if fault == "dark":
        with Image.open(io.BytesIO(jpeg)) as image:
            dark = image.convert("RGB").point(lambda v: round(v * 0.35))
        buffer = io.BytesIO()
        dark.save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()
    if fault == "blur":
        return CameraFault("blur", 3.0).apply(jpeg)
    return CameraFault("resize", 0.5).apply(jpeg) if fault == "resize" else jpeg


@pytest.mark.parametrize(
    ("fault", "statistic"),
    [
        ("clean", ()),
        ("dark", ("brightness",)),
        ("blur", ("sharpness", "bytes_per_pixel")),  # a blurred JPEG also compresses smaller
        ("resize", ("width", "height")),
    ],
)
def test_input_drift_names_the_statistic_of_a_dark_blurred_or_resized_night(
    output, tmp_path, fault, statistic
):
    from bincount.nightly.scoring import score_images

    bucket = tmp_path / "bucket"
    write_clean_bucket(bucket, 40, start=300)  # new bins, photographed like the trained-on ones
    for photo in (bucket / "bin-images").glob("*.jpg"):
        photo.write_bytes(_faulty(photo.read_bytes(), fault))
    score_images(Location(str(bucket)), output, run_id=f"night-{fault}")
    version = champion(output).version
    check = monitor_night(
        output, run_id=f"night-{fault}", model_version=version, review=ReviewPolicy(), policy=POLICY
    )

    row = check.row
    assert row["bins"] == 40 and row["reference_images"] == 40  # the test set, topped up
    assert output.exists(f"models/{version}/input-reference.parquet")  # kept with the model
    inputs = check.event_payload()["inputs"]
    assert set(inputs) == set(row["input_statistics"]) and len(inputs) == 7
    moved = [r for r in check.reasons if r.startswith("input ")]
    if not statistic:
        assert not check.drift and check.reasons == [], check.reasons
        assert max(f["psi_reference"] for f in inputs.values()) < POLICY.max_input_psi
    else:
        assert check.drift  # one row, so one event, whatever the tiny model predicts
        assert any(r.split()[1] in statistic for r in moved), moved  # the fault's own figure
        assert all(r.split()[2:4] == ["moved:", "PSI"] for r in moved), moved
        assert max(inputs[name]["psi_reference"] for name in statistic) > POLICY.max_input_psi
    scored = read_table(output, SCORES, columns=["brightness", "width", "bytes_per_pixel"])
    assert scored.column("brightness").null_count == 0 and scored.num_rows == 40
