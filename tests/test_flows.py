"""The flows under a real Prefect API, reading a real S3 endpoint; and the CLI."""

from __future__ import annotations

import json

import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.testing.s3server import upload_tree
from tests.builders import write_bin, write_clean_bucket, write_malformed


def _artifacts(flow_run_id) -> dict[str, str]:
    """Markdown/table artifacts of a flow run and its task runs, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a.data for a in found if a.key}


@pytest.fixture
def bucket_with_faults(tmp_path, s3_server, bucket):
    root = tmp_path / "bucket"
    write_clean_bucket(root, 150)
    quarantined = write_malformed(root)
    write_bin(root, "80001", {"B1": 2, "B2": 3}, expected=4)  # label noise
    upload_tree(s3_server.endpoint_url, bucket, root)
    return f"s3://{bucket}", len(quarantined)


def test_data_pipeline_end_to_end_with_artifacts(
    prefect_api, settings_env, bucket_with_faults, tmp_path
):
    from prefect.client.orchestration import get_client

    from flows.data import data_pipeline

    source, malformed = bucket_with_faults
    output = str(tmp_path / "out")
    state = data_pipeline(source=source, output=output, policy="moderate", return_state=True)
    assert state.is_completed(), state
    result = state.result()

    assert result["ingest"]["ingested"] == 151 and result["ingest"]["quarantined"] == malformed
    assert result["validate"]["passed"] and result["validate"]["quarantined_rows"] == 1
    assert result["manifest"]["rows"] == 150  # the noisy bin is left out
    bins = read_table(Location(output), "bins")
    assert bins.num_rows == 151

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs()
    runs = {run.flow_id: run for run in children}
    assert len(runs) >= 4
    names = [run.name for run in children]
    assert any(name.startswith(f"ingest {output}") for name in names), names

    ingest_run = next(r for r in children if r.name.startswith(f"ingest {output}"))
    artifacts = _artifacts(ingest_run.id)
    assert "| ingested | 151 |" in artifacts["ingest-summary"]
    validate_run = next(r for r in children if r.name.startswith(f"validate {output}"))
    assert "| BC-EQ-004 |" in _artifacts(validate_run.id)["label-validation"]
    manifest_run = next(r for r in children if r.name.startswith(f"manifest {output}"))
    assert "| train |" in _artifacts(manifest_run.id)["manifest-class-distribution"]

    rerun = data_pipeline(source=source, output=output, policy="moderate")
    assert rerun["ingest"]["ingested"] == 0 and rerun["ingest"]["quarantined"] == 0
    assert rerun["manifest"]["version"] == result["manifest"]["version"]
    assert read_table(Location(output), "bins").num_rows == 151


def test_validate_flow_fails_past_a_threshold_but_keeps_the_quarantine(
    prefect_api, settings_env, tmp_path, s3_server, bucket, monkeypatch
):
    from bincount.core.settings import get_settings
    from flows.ingest import ingest
    from flows.validate import validate

    root = tmp_path / "bucket"
    write_clean_bucket(root, 20)
    write_bin(root, "80003", {"B1": 30})
    upload_tree(s3_server.endpoint_url, bucket, root)
    output = str(tmp_path / "out")
    monkeypatch.setenv("BINCOUNT_MAX_EXPECTED_QUANTITY", "10")
    get_settings.cache_clear()

    ingest(source=f"s3://{bucket}", output=output)
    state = validate(source=f"s3://{bucket}", output=output, return_state=True)

    assert state.is_failed()
    assert "BC-EQ-003" in str(state.message) or "BC-EQ-003" in repr(
        state.result(raise_on_failure=False)
    )
    rows = read_table(Location(output), "quarantine").to_pylist()
    assert [(r["image_id"], r["reason_code"]) for r in rows] == [("80003", "BC-EQ-003")]


def test_cli_runs_synth_and_the_flows(prefect_api, settings_env, tmp_path, capsys):
    from flows.cli import main

    bucket = str(tmp_path / "bucket")
    output = str(tmp_path / "out")
    assert main(["synth", bucket, "--bins", "12", "--seed", "1", "--max-count", "5"]) == 0
    capsys.readouterr()
    assert main(["ingest", "--source", bucket, "--output", output, "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["ingested"] == 5
    assert main(["pipeline", "--source", bucket, "--output", output, "--policy", "max:5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ingest"]["ingested"] == 7 and result["manifest"]["rows"] == 12
