"""Decoding bin photos within stated limits: hostile images become reasons, never exceptions;
valid ones decode to what they show (Hypothesis over any bytes and any image)."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bincount.core.fetch import ObjectTooLarge
from bincount.core.limits import ImageLimits
from bincount.images.decode import UndecodableImage, decode_image, decode_or_reason
from tests.builders import flat_jpeg, flat_png, image_bytes

CODES = {
    "undecodable_image",
    "image_too_large",
    "image_too_many_pixels",
    "unreadable_image",
    "read_gone",
}


def _fault(result) -> UndecodableImage:
    assert isinstance(result, UndecodableImage), result
    assert result.code in CODES and result.reason.startswith("Expected")
    return result


def test_a_huge_small_jpeg_decodes_at_reduced_size_within_the_pixel_limit():
    payload = flat_jpeg(20000, 12000)  # 240 megapixels in 1.9 MB
    # This thread's CPU time, not the wall clock: the same on a busy machine as on a quiet one.
    started = time.thread_time()
    decoded = decode_or_reason(payload, 32)
    assert time.thread_time() - started < 5
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert np.all(np.abs(decoded.astype(int) - 128) <= 1)  # the flat grey it is
    # At 1/8 scale it is still 2500 x 1500: past a lower limit, it is refused undecoded.
    fault = _fault(decode_or_reason(payload, 32, ImageLimits(max_pixels=3_000_000)))
    assert (fault.code, fault.exception_type) == ("image_too_many_pixels", "UndecodableImage")
    assert fault.reason == (
        "Expected an image that decodes to at most 3,000,000 pixels, "
        "but 20000x12000 decodes to 3,750,000"
    )


def test_a_png_bomb_is_refused_by_pillows_bound_and_by_ours():
    fault = _fault(decode_or_reason(flat_png(20000, 12000), 32))
    assert (fault.code, fault.exception_type) == ("image_too_many_pixels", "DecompressionBombError")
    small = flat_png(300, 200)
    assert decode_or_reason(small, 32).shape == (32, 32, 3)
    fault = _fault(decode_or_reason(small, 32, ImageLimits(max_pixels=59_999)))
    assert fault.code == "image_too_many_pixels" and "300x200 decodes to 60,000" in fault.reason


def test_a_progressive_jpeg_counts_whole_because_its_decoder_holds_it_whole():
    image = Image.new("RGB", (300, 200), (200, 40, 40))
    limits = ImageLimits(max_pixels=50_000)
    assert decode_or_reason(image_bytes(image, "JPEG"), 32, limits).shape == (32, 32, 3)
    fault = _fault(decode_or_reason(image_bytes(image, "JPEG", progressive=True), 32, limits))
    assert fault.code == "image_too_many_pixels"


def test_bytes_limit_fetch_errors_and_formats_outside_the_list():
    payload = image_bytes(Image.new("RGB", (64, 48), (1, 2, 3)), "JPEG")
    fault = _fault(decode_or_reason(payload, 32, ImageLimits(max_bytes=len(payload) - 1)))
    assert fault.code == "image_too_large"
    fault = _fault(decode_or_reason(ObjectTooLarge("s3://b/bin-images/1.jpg", 10), 32))
    assert (fault.code, fault.exception_type) == ("image_too_large", "ObjectTooLarge")
    fault = _fault(decode_or_reason(FileNotFoundError("s3://b/bin-images/1.jpg"), 32))
    assert (fault.code, fault.exception_type) == ("read_gone", "FileNotFoundError")
    ppm = image_bytes(Image.new("RGB", (8, 8)), "PPM")  # Pillow reads it; scoring does not
    fault = _fault(decode_or_reason(ppm, 32))
    assert (fault.code, fault.exception_type) == ("undecodable_image", "UnidentifiedImageError")
    with pytest.raises(UndecodableImage, match="Expected a decodable image"):
        decode_image(b"\xff\xd8\xff\xe0 truncated", 32)


# -- properties --------------------------------------------------------------------------------
MODES = ["RGB", "L", "CMYK", "RGBA", "P", "1", "I;16"]
FORMATS = {  # format: modes it can store
    "JPEG": {"RGB", "L", "CMYK"},
    "PNG": {"RGB", "L", "RGBA", "P", "1", "I;16"},
    "GIF": {"L", "P"},
    "BMP": {"RGB", "L", "P", "1"},
    "TIFF": {"RGB", "L", "CMYK", "RGBA", "1"},
    "WEBP": {"RGB", "RGBA"},
}


@st.composite
def images(draw) -> tuple[Image.Image, str, dict]:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(sorted(FORMATS[fmt])))
    size = (draw(st.integers(1, 300)), draw(st.integers(1, 300)))
    colour = Image.new("RGB", (1, 1), draw(st.tuples(*[st.integers(0, 255)] * 3)))
    image = (colour.quantize() if mode == "P" else colour.convert(mode)).resize(size)
    options = {"progressive": draw(st.booleans())} if fmt == "JPEG" else {}
    if fmt == "WEBP":
        options = {"lossless": True}
    return image, fmt, options


@st.composite
def hostile_payloads(draw) -> bytes:
    """Random bytes, or a real image truncated, overwritten or spliced at random."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    image, fmt, options = draw(images())
    data = bytearray(image_bytes(image, fmt, **options))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
        if action == "truncate":
            del data[at:]
        elif action == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


# Pillow's notes on corrupt TIFF tags, and its bomb warning for 89-179 M declared pixels (the
# pixel limit then refuses the image anyway).
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=300, deadline=None)
@given(payload=hostile_payloads(), size=st.sampled_from([16, 32, 64]))
def test_any_bytes_decode_to_an_image_or_a_reason_never_an_exception(payload, size):
    result = decode_or_reason(payload, size, ImageLimits(max_pixels=40_000))
    if isinstance(result, np.ndarray):
        assert result.shape == (size, size, 3) and result.dtype == np.uint8
    else:
        _fault(result)


@settings(max_examples=150, deadline=None)
@given(picture=images(), size=st.sampled_from([16, 32]))
def test_any_valid_flat_image_decodes_to_its_colour(picture, size):
    image, fmt, options = picture
    # The reference: Pillow's own conversion of that one colour to RGB.
    reference = np.array(image.convert("RGB").getpixel((0, 0)), dtype=int)

    decoded = decode_image(image_bytes(image, fmt, **options), size)

    assert decoded.shape == (size, size, 3)
    tolerance = 8 if fmt == "JPEG" else 0
    assert np.abs(decoded.astype(int) - reference).max() <= tolerance


def test_reasons_cross_process_pools_whole():
    from bincount.data.metadata import MalformedMetadata

    reasons = [
        UndecodableImage("image_too_large", "Expected at most 10 bytes", "ObjectTooLarge"),
        ObjectTooLarge("s3://b/bin-images/1.jpg", 10),  # sent to the cache's decoding processes
        MalformedMetadata("bad_json", "Expected valid JSON", cause=ValueError("x")),
    ]
    for reason in reasons:
        copy = pickle.loads(pickle.dumps(reason))
        assert (type(copy), vars(copy), str(copy)) == (type(reason), vars(reason), str(reason))


def test_a_train_run_killed_while_caching_resumes_the_cache_then_trains(
    s3_server, bucket, tmp_path, cli_env
):
    """The image cache's exactly-once guarantee on the path production runs: ``bincount train``
    (the flow, on the Prefect API) killed with SIGKILL while it builds the cache, then run
    again: the cache equals one built without a kill, and the model trains on it."""
    import json
    import subprocess

    from bincount.core.storage import Location
    from bincount.core.tables import read_table
    from bincount.data.manifest import load_manifest
    from bincount.images.cache import build_image_cache, cache_folder
    from bincount.images.shards import load_cached_splits
    from bincount.model.registry import list_models
    from bincount.testing.pipeline import TINY, run_pipeline
    from bincount.testing.processes import bincount_command, kill_midway
    from bincount.testing.proxycontrol import fault_proxy
    from bincount.testing.s3server import upload_tree
    from tests.builders import write_clean_bucket

    write_clean_bucket(tmp_path / "bucket", 40)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    source = Location(f"s3://{bucket}", endpoint_url=s3_server.endpoint_url, anonymous=True)
    out = tmp_path / "out"
    version = run_pipeline(source, Location(str(out)), until="manifest").manifest_version
    folder = out / cache_folder(version, TINY["image_size"])
    tiny = [f"--{name.replace('_', '-')}={value}" for name, value in TINY.items()]
    command = bincount_command("train", "--output", str(out), *tiny)
    # 40 ms per image, one at a time, 4 images a shard: ten shards over a couple of seconds.
    with fault_proxy(s3_server.endpoint_url, latency_ms=40) as proxy:
        env = cli_env(s3_endpoint_url=proxy.endpoint_url, max_concurrency=1, cache_shard_size=4)
        committed = kill_midway(
            command, env=env, progress=lambda: len(list((folder / "_shards").glob("part-*")))
        )
        assert 2 <= committed < 10, "the kill should land midway"
        assert not (folder / "_complete.json").exists() and not list_models(Location(str(out)))
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, check=True)

    rows, _ = load_manifest(Location(str(out)), version)
    whole = Location(str(tmp_path / "whole"))
    build_image_cache(
        source, whole, rows, manifest_version=version, size=TINY["image_size"], shard_size=4
    )
    splits = ("train", "val", "test")
    got = load_cached_splits(Location(str(out)), version, TINY["image_size"], splits)
    expected = load_cached_splits(whole, version, TINY["image_size"], splits)
    for split in splits:  # every image once, the same pixels as an uninterrupted build
        assert got[split].image_ids == expected[split].image_ids
        everything = np.arange(len(got[split]))
        np.testing.assert_array_equal(got[split].read(everything), expected[split].read(everything))
    assert sum(len(got[split]) for split in splits) == 40
    assert read_table(Location(str(out)), "quarantine").num_rows == 0
    (model,) = list_models(Location(str(out)))
    assert json.loads(rerun.stdout)["version"] == model["version"]
