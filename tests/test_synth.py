"""The synthetic ABID bucket: real layout and JSON shape, determinism, appends, labels, defects."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bincount import synth
from bincount.core.storage import Location

ABID = Path(__file__).resolve().parents[1].parent / "shared" / "abid"
SKU_KEYS = {"asin", "height", "length", "name", "normalizedName", "quantity", "weight", "width"}


def objects(root: Path, prefix: str) -> dict[str, bytes]:
    """{id: bytes} of every object under ``prefix``."""
    folder = root / prefix
    return {p.stem: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, synth.SynthSummary]:
    root = tmp_path_factory.mktemp("bucket")
    summary = synth.synthesize(Location(str(root)), bins=40, seed=3, max_count=8, workers=1)
    return root, summary


def test_layout_pairs_every_metadata_object_with_its_image(synthetic):
    root, summary = synthetic
    images, metadata = objects(root, "bin-images"), objects(root, "metadata")
    assert sorted(images) == sorted(metadata) == sorted(summary.ids)
    assert summary.bins == 40 and len(set(summary.ids)) == 40
    assert {p.suffix for p in (root / "bin-images").iterdir()} == {".jpg"}
    assert {p.suffix for p in (root / "metadata").iterdir()} == {".json"}


def test_ids_have_every_shape_the_real_bucket_has(synthetic):
    _, summary = synthetic
    shapes = {
        "five": [i for i in summary.ids if re.fullmatch(r"\d{5}", i)],
        "six": [i for i in summary.ids if re.fullmatch(r"[1-9]\d{5}", i)],
        "unpadded": [i for i in summary.ids if re.fullmatch(r"[1-9]\d{0,3}", i)],
    }
    assert sum(map(len, shapes.values())) == len(summary.ids)
    assert len(shapes["five"]) > len(shapes["six"]) >= len(shapes["unpadded"]) >= 1


def test_metadata_has_the_originals_shape_and_format(synthetic):
    root, _ = synthetic
    for bin_id, raw in objects(root, "metadata").items():
        document = json.loads(raw)
        # Byte for byte the originals' format: sorted keys, 4-space indent, no final newline.
        assert raw == json.dumps(document, indent=4, sort_keys=True).encode()
        expected = {"BIN_FCSKU_DATA", "EXPECTED_QUANTITY"}
        if len(bin_id) < 5:
            expected.add("image_fname")
            assert document["image_fname"] == f"{bin_id}.jpg"
        assert set(document) == expected
        assert isinstance(document["EXPECTED_QUANTITY"], int)
        for sku, entry in document["BIN_FCSKU_DATA"].items():
            assert SKU_KEYS - {"normalizedName"} <= set(entry) <= SKU_KEYS
            assert re.fullmatch(r"[0-9A-Z]{10}", sku) and re.fullmatch(
                r"[0-9A-Z]{10}", entry["asin"]
            )
            assert isinstance(entry["quantity"], int) and entry["quantity"] >= 1
            for axis in ("height", "length", "width"):
                assert entry[axis] is None or (
                    entry[axis]["unit"] == "IN" and isinstance(entry[axis]["value"], float)
                )
            assert entry["weight"] is None or entry["weight"]["unit"] == "pounds"
            if "normalizedName" in entry:
                assert entry["normalizedName"] == entry["name"]


def test_counts_equal_the_sum_of_sku_quantities_and_stay_in_range(synthetic):
    root, summary = synthetic
    counts = []
    for raw in objects(root, "metadata").values():
        document = json.loads(raw)
        skus = document["BIN_FCSKU_DATA"]
        assert document["EXPECTED_QUANTITY"] == sum(e["quantity"] for e in skus.values())
        assert (document["EXPECTED_QUANTITY"] == 0) == (skus == {})
        counts.append(document["EXPECTED_QUANTITY"])
    assert all(0 <= c <= 8 for c in counts)
    assert summary.label_histogram == dict(sorted((c, counts.count(c)) for c in set(counts)))
    assert summary.defects == {}


def test_images_are_rgb_jpegs_of_the_originals_sizes(synthetic):
    root, _ = synthetic
    sizes = []
    for raw in objects(root, "bin-images").values():
        image = Image.open(io.BytesIO(raw))
        assert image.format == "JPEG" and image.mode == "RGB"
        image.load()
        width, height = image.size
        assert synth.MIN_WIDTH <= width <= synth.MAX_WIDTH
        assert synth.MIN_HEIGHT <= height <= synth.MAX_HEIGHT
        sizes.append(image.size)
    assert len(set(sizes)) > len(sizes) // 2  # sizes vary, as in ABID


@pytest.mark.real_data
def test_key_sets_match_the_real_metadata(synthetic):
    if not (ABID / "sample" / "metadata").exists():
        pytest.skip("../shared/abid is absent")
    real_top, real_sku = set(), set()
    for path in sorted((ABID / "sample" / "metadata").glob("*.json")):
        document = json.loads(path.read_text())
        real_top.add(frozenset(document))
        real_sku.update(frozenset(entry) for entry in document["BIN_FCSKU_DATA"].values())
        assert path.read_text() == json.dumps(document, indent=4, sort_keys=True)
    root, _ = synthetic
    for raw in objects(root, "metadata").values():
        document = json.loads(raw)
        assert frozenset(document) in real_top
        assert {frozenset(entry) for entry in document["BIN_FCSKU_DATA"].values()} <= real_sku


@pytest.mark.real_data
def test_embedded_distribution_is_the_real_label_histogram():
    labels = ABID / "labels" / "expected_quantity_00001-99999.csv"
    if not labels.exists():
        pytest.skip("../shared/abid is absent")
    rows = labels.read_text().split()
    assert rows[0] == "n"
    counts = np.bincount([int(r) for r in rows[1:]])
    assert synth.label_distribution() == {c: int(n) for c, n in enumerate(counts) if n}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # 16 bins make two batches, so two worker processes really share the work.
    synth.synthesize(Location(str(one)), bins=16, seed=11, max_count=6, workers=1)
    synth.synthesize(Location(str(two)), bins=16, seed=11, max_count=6, workers=2)
    for prefix in ("bin-images", "metadata"):
        assert objects(one, prefix) == objects(two, prefix)
    other = tmp_path / "other"
    synth.synthesize(Location(str(other)), bins=16, seed=12, max_count=6, workers=1)
    assert objects(other, "bin-images") != objects(one, "bin-images")


def test_append_adds_fresh_ids_deterministically(tmp_path):
    first = synth.synthesize(Location(str(tmp_path / "a")), bins=12, seed=5, workers=1)
    more = synth.synthesize(Location(str(tmp_path / "a")), bins=10, seed=5, append=True, workers=1)
    assert not set(first.ids) & set(more.ids)
    assert len(objects(tmp_path / "a", "metadata")) == 22
    # New ids continue the sequence: the appended bins are the ones a 22-bin run ends with.
    whole = synth.synthesize(Location(str(tmp_path / "b")), bins=22, seed=5, workers=1)
    assert first.ids + more.ids == whole.ids
    assert objects(tmp_path / "a", "bin-images") == objects(tmp_path / "b", "bin-images")


def test_writes_the_same_bucket_to_s3(s3_server, bucket, tmp_path):
    dest = Location(
        f"s3://{bucket}/abid", endpoint_url=s3_server.endpoint_url, key="testing", secret="testing"
    )
    # Two workers: the Location travels to them by pickle, credentials and endpoint included.
    remote = synth.synthesize(dest, bins=16, seed=11, max_count=6, workers=2)
    local = synth.synthesize(Location(str(tmp_path)), bins=16, seed=11, max_count=6, workers=1)
    assert remote.ids == local.ids
    for prefix, suffix in (("bin-images", ".jpg"), ("metadata", ".json")):
        keys = dest.list(prefix).column("key").to_pylist()
        assert keys == sorted(f"{prefix}/{i}{suffix}" for i in local.ids)
        assert {Path(k).stem: dest.read_bytes(k) for k in keys} == objects(tmp_path, prefix)
    with pytest.raises(ValueError, match="append=True"):
        synth.synthesize(dest, bins=1, seed=11, workers=1)


def test_append_steps_over_foreign_ids(tmp_path):
    dest = Location(str(tmp_path))
    dest.write_bytes("metadata/00001.json", b"{}")  # e.g. a copied real object
    summary = synth.synthesize(dest, bins=3, seed=1, append=True, workers=1)
    assert "00001" not in summary.ids and len(summary.ids) == 3


def test_a_non_empty_destination_without_append_is_refused(tmp_path):
    dest = Location(str(tmp_path))
    synth.synthesize(dest, bins=2, seed=1, workers=1)
    with pytest.raises(ValueError, match=r"Expected an empty destination.*append=True"):
        synth.synthesize(dest, bins=2, seed=1, workers=1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bins": 0},
        {"seed": -1},
        {"max_count": synth.MAX_COUNT_LIMIT + 1},
        {"defect_rate": 1.5},
        {"workers": 0},
    ],
)
def test_bad_arguments_say_what_was_expected(tmp_path, kwargs):
    arguments = {"bins": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match="Expected"):
        synth.synthesize(Location(str(tmp_path)), **arguments)


def test_ids_invert_so_appends_can_continue():
    ordinals = [*range(200), *range(synth.MAX_BINS - 40, synth.MAX_BINS)]
    ids = [synth.bin_id(o) for o in ordinals]
    assert len(set(ids)) == len(ids)
    assert [synth.ordinal_of(i) for i in ids] == ordinals
    assert all(len(i) in (3, 4, 5, 6) for i in ids)
    assert synth.ordinal_of("00000") is None and synth.ordinal_of("abc") is None


def truncated_reference(max_count: int) -> np.ndarray:
    """The truncated, renormalised distribution, straight from the resource file."""
    text = Path(synth.__file__).parent.with_name("resources").joinpath("label_distribution.json")
    histogram = json.loads(text.read_text())["histogram"]
    weights = np.array([histogram.get(str(c), 0) for c in range(max_count + 1)], float)
    return weights / weights.sum()


@pytest.mark.parametrize("max_count", [5, 10])
def test_labels_follow_the_real_distribution_truncated(max_count):
    expected = truncated_reference(max_count)
    assert np.allclose(synth.count_probabilities(max_count), expected)
    n = 10_000
    drawn = [synth.bin_count(seed=9, ordinal=o, max_count=max_count) for o in range(n)]
    observed = np.bincount(drawn, minlength=max_count + 1)
    assert len(observed) == max_count + 1
    # Truncated, not clipped: the top count is as rare as the real data says, no spike.
    chi2 = float((((observed - n * expected) ** 2) / (n * expected)).sum())
    assert chi2 < 3 * (max_count + 1), (observed.tolist(), (n * expected).round().tolist())


def test_catalogue_has_the_real_oddities():
    products = synth.catalogue(0)
    assert any(p.sku != p.asin for p in products)
    assert any(not p.normalized for p in products)
    assert any(p.weight is None for p in products)
    looks = {p.look.kind for p in products}
    assert {"box", "book", "bag", "bottle"} <= looks


def test_no_unit_is_hidden_beyond_the_bound():
    pools, products = synth.texture_pools(0), synth.catalogue(0)
    shares = []
    for ordinal in range(25):
        rng = np.random.default_rng([ordinal, 1])
        lines = synth.pick_lines(rng, count=2 + ordinal % 12, catalogue=products)
        rendered = synth.render_bin(rng, lines, pools=pools)
        assert len(rendered.visible) == sum(q for _, q in lines)
        shares.extend(rendered.visible)
    assert min(shares) >= 1 - synth.MAX_HIDDEN


def test_defects_are_injected_as_recorded(tmp_path):
    summary = synth.synthesize(Location(str(tmp_path)), bins=20, seed=2, defect_rate=1.0, workers=1)
    assert set(summary.defects) == set(summary.ids)
    assert set(summary.defects.values()) == set(synth.DEFECT_KINDS)
    images, metadata = objects(tmp_path, "bin-images"), objects(tmp_path, "metadata")
    for bin_id, kind in summary.defects.items():
        raw = metadata[bin_id]
        if kind == "truncated_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(raw)
            continue
        document = json.loads(raw)
        total = sum(e["quantity"] for e in document["BIN_FCSKU_DATA"].values())
        if kind == "label_noise":
            assert document["EXPECTED_QUANTITY"] != total >= 0
        elif kind == "missing_expected_quantity":
            assert "EXPECTED_QUANTITY" not in document
        elif kind == "string_expected_quantity":
            assert document["EXPECTED_QUANTITY"] == str(total)
        assert (bin_id in images) == (kind != "missing_image")


def test_defects_leave_the_clean_bins_untouched(tmp_path):
    clean = synth.synthesize(Location(str(tmp_path / "c")), bins=12, seed=4, workers=1)
    faulty = synth.synthesize(
        Location(str(tmp_path / "f")), bins=12, seed=4, defect_rate=0.4, workers=1
    )
    assert 0 < len(faulty.defects) < 12
    assert clean.label_histogram == faulty.label_histogram  # the true counts do not move
    clean_root, faulty_root = tmp_path / "c", tmp_path / "f"
    clean_images, faulty_images = (
        objects(clean_root, "bin-images"),
        objects(faulty_root, "bin-images"),
    )
    clean_meta, faulty_meta = objects(clean_root, "metadata"), objects(faulty_root, "metadata")
    for bin_id in clean.ids:
        if faulty.defects.get(bin_id) != "missing_image":
            assert clean_images[bin_id] == faulty_images[bin_id]
        if bin_id not in faulty.defects:
            assert clean_meta[bin_id] == faulty_meta[bin_id]


def test_cli_writes_the_truth_beside_a_local_bucket(tmp_path, capsys):
    from flows.cli import main

    dest = tmp_path / "bucket"
    assert main(["synth", str(dest), "--bins", "30", "--seed", "4", "--mismatch-rate", "0.3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    truth = pq.read_table(printed["truth"]).to_pylist()
    assert printed["truth"].startswith(str(tmp_path / "bucket.truth") + "/")
    assert len(truth) == 30 and not (dest / "bucket.truth").exists()
    mismatched = [r for r in truth if r["defect"] == "record_mismatch"]
    assert mismatched and all(r["recorded_count"] != r["true_count"] for r in mismatched)
    assert set(printed["defects"]) == {r["image_id"] for r in mismatched}
