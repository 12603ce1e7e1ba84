"""Batches decoded for the model's device (nvJPEG and Pillow threads on a GPU), run here on the
CPU: the same code with ``device="cpu"`` (torchvision's libjpeg-turbo, no stream), against
Pillow's decoding, which training's cache uses."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from bincount.core.limits import ImageLimits
from bincount.core.storage import Location
from bincount.images.decode import UndecodableImage, decode_image
from bincount.images.devicedecode import DeviceDecoder
from bincount.images.jpeg import jpeg_frame
from bincount.images.stats import statistics_table
from bincount.nightly.scorer import decoded_batches
from tests.builders import flat_jpeg, image_bytes


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shapes on a gradient: JPEG-friendly, like a bin photo and unlike noise."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    for _ in range(6):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(10, 40)
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(
    params=[
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ]
)
def device(request) -> str:
    """The CPU everywhere; a GPU too where there is one (nvJPEG, a stream, an event)."""
    return request.param


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def _mixed() -> list[bytes | Exception]:
    photos = [image_bytes(_photo(320, 240, seed), "JPEG", quality=92) for seed in (1, 2)]
    return [
        photos[0],
        image_bytes(_photo(200, 300, 3), "PNG"),  # not a JPEG: Pillow
        b"\xff\xd8\xff\xe0 not really a jpeg",  # Pillow says why
        OSError("gone"),
        photos[1],
        flat_jpeg(96, 64),  # grey
        image_bytes(_photo(240, 180, 4), "JPEG", progressive=True),  # nvJPEG's gap: Pillow
    ]


@pytest.mark.parametrize("host_share", [0.0, 0.5, 1.0, None])
def test_every_split_gives_each_payload_its_image_or_its_reason_in_order(pool, host_share, device):
    payloads = _mixed()
    decoder = DeviceDecoder(64, device, pool=pool, host_share=host_share)
    results = decoder.results(payloads)
    for i in (0, 1, 4, 5, 6):
        assert isinstance(results[i], torch.Tensor)
        assert results[i].dtype == torch.uint8 and results[i].shape == (64, 64, 3)
        reference = decode_image(payloads[i], 64).astype(np.int16)
        difference = np.abs(results[i].cpu().numpy().astype(np.int16) - reference)
        assert difference.mean() < 4, i  # the same picture; resampling differs a little
        if host_share == 1.0:
            assert difference.max() == 0, i  # every image through Pillow: exactly its pixels
    assert isinstance(results[2], UndecodableImage) and results[2].code == "undecodable_image"
    assert isinstance(results[3], UndecodableImage) and results[3].code == "unreadable_image"


def test_the_device_takes_sequential_jpegs_and_pillow_the_rest(pool, device):
    payloads = _mixed()
    batch = DeviceDecoder(64, device, pool=pool, host_share=0.0).decode(payloads)
    assert batch.positions == [0, 1, 4, 5, 6]
    assert [i for i, _ in batch.failures] == [2, 3]
    assert batch.on_host == 2  # the PNG and the progressive JPEG; the three others on the device
    assert (batch.ready is None) == (device == "cpu")  # an event on the decoder's stream
    assert batch.images.device.type == device
    everything_on_pillow = DeviceDecoder(64, device, pool=pool, host_share=1.0).decode(payloads)
    assert everything_on_pillow.on_host == 5


def test_the_statistics_are_those_of_the_images_the_model_gets(pool, device):
    payloads = _mixed()
    batch = DeviceDecoder(48, device, pool=pool, host_share=0.5).decode(payloads)
    good = [payloads[i] for i in batch.positions]
    expected = statistics_table(
        batch.wait().cpu().numpy(), good
    )  # sizes read from the headers again
    assert batch.statistics.num_rows == len(batch.positions) == 5
    for name in expected.column_names:
        np.testing.assert_allclose(
            batch.statistics.column(name).to_numpy(), expected.column(name).to_numpy(), rtol=1e-5
        )
    assert batch.statistics.column("width").to_pylist() == [320, 200, 320, 96, 240]


def test_the_share_follows_the_measured_rates_within_its_bounds(pool, device):
    photos = [image_bytes(_photo(320, 240, seed), "JPEG", quality=90) for seed in range(12)]
    decoder = DeviceDecoder(32, device, pool=pool)
    assert decoder.host_share == 0.5
    shares = []
    for _ in range(6):
        batch = decoder.decode(photos)
        assert batch.positions == list(range(12)) and not batch.failures
        shares.append(decoder.host_share)
    assert len(set(shares)) > 1  # it moved
    assert all(0.05 <= share <= 0.95 for share in shares)
    fixed = DeviceDecoder(32, "cpu", pool=pool, host_share=0.25)
    fixed.decode(photos)
    assert fixed.host_share == 0.25
    with pytest.raises(ValueError, match="host share"):
        DeviceDecoder(32, "cpu", pool=pool, host_share=1.5)


def test_over_the_pixel_limit_goes_to_pillow_which_applies_the_limits(pool, device):
    huge = flat_jpeg(4096, 4096)
    decoder = DeviceDecoder(32, device, pool=pool, limits=ImageLimits(max_pixels=1_000_000))
    (result,) = decoder.results([huge])
    # Pillow's draft decodes this sequential JPEG at 1/8 scale, within the limit.
    assert isinstance(result, torch.Tensor) and result.shape == (32, 32, 3)
    strict = DeviceDecoder(32, device, pool=pool, limits=ImageLimits(max_pixels=10_000))
    (refused,) = strict.results([huge])
    assert isinstance(refused, UndecodableImage) and refused.code == "image_too_many_pixels"
    empty = DeviceDecoder(32, device, pool=pool).decode([])
    assert empty.positions == [] and empty.images.shape == (0, 32, 32, 3)
    assert empty.statistics.num_rows == 0


def test_scoring_batches_take_the_device_path_where_asked(tmp_path, device):
    source = Location(str(tmp_path / "bucket"))
    payloads = _mixed()
    keys = []
    for i, payload in enumerate(payloads):
        if isinstance(payload, bytes):
            keys.append(f"bin-images/{i}.jpg")
            source.write_bytes(keys[-1], payload)
    keys.append("bin-images/missing.jpg")
    common = {"size": 40, "batch_size": 4, "device": device, "workers": 2}
    on_device = list(decoded_batches(source, keys, device_decode=True, host_share=0.5, **common))
    on_pillow = list(decoded_batches(source, keys, device_decode=False, **common))
    for batches in (on_device, on_pillow):
        assert [key for b in batches for key in b.keys] == [keys[i] for i in (0, 1, 3, 4, 5)]
        assert {key for b in batches for key, _ in b.failures} == {keys[2], keys[6]}
        assert sum(b.statistics.num_rows for b in batches) == 5
    assert all(isinstance(b.images, torch.Tensor) for b in on_device)
    assert all(isinstance(b.images, np.ndarray) for b in on_pillow)
    device_pixels = torch.cat([b.images for b in on_device]).cpu().numpy().astype(np.int16)
    pillow_pixels = np.concatenate([b.images for b in on_pillow]).astype(np.int16)
    assert np.abs(device_pixels - pillow_pixels).mean() < 4


def test_a_jpeg_frame_is_read_from_its_markers_alone():
    cases = [
        (image_bytes(_photo(37, 21, 0), "JPEG"), (37, 21, 3, True, 3)),
        # A progressive JPEG's first scan: the DC coefficients of every component.
        (image_bytes(_photo(37, 21, 0), "JPEG", progressive=True), (37, 21, 3, False, 3)),
        (image_bytes(Image.new("L", (10, 300)), "JPEG"), (10, 300, 1, True, 1)),
        (image_bytes(Image.new("CMYK", (8, 8)), "JPEG"), (8, 8, 4, True, 4)),
        (flat_jpeg(20000, 12000), (20000, 12000, 1, True, 1)),
    ]
    for payload, (width, height, components, sequential, scan) in cases:
        frame = jpeg_frame(payload)
        assert frame is not None
        assert (frame.width, frame.height, frame.components) == (width, height, components)
        assert frame.sequential is sequential
        assert frame.scan_components == scan
        with JpegImagePlugin.JpegImageFile(io.BytesIO(payload)) as image:
            assert image.size == (width, height)
    good = cases[0][0]
    for broken in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0 not really", good[:20], b"\x89PNG" + good):
        assert jpeg_frame(broken) is None
    sos = good.index(b"\xff\xda")
    cut = jpeg_frame(good[:sos])  # the frame read, the bytes ending before the first scan
    assert cut is not None and (cut.width, cut.height) == (37, 21) and cut.scan_components is None
