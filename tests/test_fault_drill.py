"""The fault drill: hostile metadata and images beside real bins in an S3 bucket, through the
nightly deployments' flows (refresh-labels, then score) with the default settings. Every good
object lands, every bad one is quarantined once with its reason, the runs complete, and a
rerun adds nothing."""

from __future__ import annotations

import collections
import shutil

import pyarrow.compute as pc
import pytest

from bincount.core.storage import Location
from bincount.core.tables import read_table
from bincount.testing.s3server import upload_tree
from tests.builders import flat_jpeg, flat_png, jpeg_bytes, write_bin, write_clean_bucket
from tests.builders import write_malformed as write_malformed_metadata

# Bins whose metadata is good and whose image is hostile: (image bytes, score reason or None).
HOSTILE_IMAGES = {
    "77001": (lambda: flat_jpeg(20000, 12000), None),  # 240 MP in 1.9 MB: decodes at 1/8 scale
    "77002": (lambda: flat_png(20000, 12000), "image_too_many_pixels"),  # PNG bytes, a bomb
    "77003": (lambda: jpeg_bytes() + bytes(17 << 20), "image_too_large"),  # past 16 MiB
    "77004": (lambda: b"", "undecodable_image"),
    "77005": (lambda: jpeg_bytes()[:300], "undecodable_image"),
    "77006": (lambda: b"GIF89a? no, text", "undecodable_image"),
}


def _table(output: str, name: str):
    return read_table(Location(output), name)


def _stage(quarantine, stage: str) -> list[dict]:
    return quarantine.filter(pc.equal(quarantine.column("stage"), stage)).to_pylist()


def _row_counts(output: str) -> dict[str, int]:
    return {
        name: _table(output, name).num_rows for name in ("bins", "items", "quarantine", "scores")
    }


@pytest.mark.slow
def test_hostile_objects_never_stop_the_nightly_runs(
    prefect_api, settings_env, trained, s3_server, bucket, tmp_path
):
    from flows.labels import refresh_labels
    from flows.score import score

    root = tmp_path / "bucket"
    shutil.copytree(trained / "bucket", root)
    output = str(tmp_path / "out")
    shutil.copytree(trained / "out" / "models", f"{output}/models")  # the registry alone
    # Enough good bins that one missing image stays within BC-IMG-001's 1 %.
    good = [
        *(p.stem for p in (root / "metadata").glob("*.json")),
        *write_clean_bucket(root, 70, start=300),
    ]
    bad_metadata = write_malformed_metadata(root)  # every kind, the three among them
    for image_id, (image, _) in HOSTILE_IMAGES.items():
        write_bin(root, image_id, {"B1": 1})
        (root / "bin-images" / f"{image_id}.jpg").write_bytes(image())
    write_bin(root, "78001", {"B1": 2}, image=False)  # metadata without its image
    (root / "bin-images" / "0888.jpg").write_bytes(jpeg_bytes())  # an image without metadata
    upload_tree(s3_server.endpoint_url, bucket, root)
    source = f"s3://{bucket}"
    metadata_keys = {f"metadata/{p.name}" for p in (root / "metadata").iterdir()}
    image_uris = {f"{source}/bin-images/{p.name}" for p in (root / "bin-images").iterdir()}

    labels = refresh_labels(source=source, output=output, return_state=True)
    scoring = score(source=source, output=output, batch_size=16, return_state=True)

    assert labels.is_completed(), labels
    assert scoring.is_completed(), scoring
    quarantine = _table(output, "quarantine")
    # Metadata: every object in bins or, once, in the ingest quarantine with its reason.
    rejected = _stage(quarantine, "ingest")
    assert collections.Counter(row["object_key"] for row in rejected).most_common(1)[0][1] == 1
    assert {row["image_id"]: row["reason_code"] for row in rejected} == bad_metadata
    for row in rejected:
        assert row["reason"].startswith("Expected") and row["exception_type"], row
    bins = _table(output, "bins")
    assert sorted(bins.column("image_id").to_pylist()) == sorted([*good, *HOSTILE_IMAGES, "78001"])
    assert set(bins.column("metadata_key").to_pylist()) | {r["object_key"] for r in rejected} == (
        metadata_keys
    )
    # Labels: the bin without its image is validation's, by its code.
    assert [(r["image_id"], r["reason_code"]) for r in _stage(quarantine, "validate")] == [
        ("78001", "BC-IMG-001")
    ]
    # Images: every image scored or, once, in the score quarantine with its reason.
    refused = {row["image_id"]: row for row in _stage(quarantine, "score")}
    assert {image_id: row["reason_code"] for image_id, row in refused.items()} == {
        image_id: code for image_id, (_, code) in HOSTILE_IMAGES.items() if code
    }
    assert refused["77002"]["exception_type"] == "DecompressionBombError"
    assert refused["77003"]["exception_type"] == "ObjectTooLarge"
    scores = _table(output, "scores")
    scored = scores.column("image_uri").to_pylist()
    assert len(scored) == len(set(scored))
    assert set(scored) | {row["object_key"] for row in refused.values()} == image_uris
    assert not set(scored) & {row["object_key"] for row in refused.values()}
    expected = dict(
        zip(scores["image_id"].to_pylist(), scores["expected_quantity"].to_pylist(), strict=True)
    )
    assert expected["77001"] == 1 and expected["0888"] is None  # the huge JPEG was scored
    assert all(expected[image_id] is None for image_id in bad_metadata)

    counts = _row_counts(output)
    again = [
        refresh_labels(source=source, output=output, return_state=True),
        score(source=source, output=output, return_state=True),
    ]
    assert all(state.is_completed() for state in again), again
    assert again[0].result()["ingest"]["new"] == 0 and again[1].result()["new"] == 0
    assert _row_counts(output) == counts
