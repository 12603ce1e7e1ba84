"""JPEG decoding on the model's device (nvJPEG on a GPU), run here on the CPU: the same calls
with ``device="cpu"``; against Pillow's decoding, which training's cache uses."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bincount.core.limits import ImageLimits
from bincount.images.decode import UndecodableImage, decode_image
from bincount.images.devicedecode import decode_on_device
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


def test_device_decoding_matches_pillow_and_falls_back_where_it_must():
    photos = [image_bytes(_photo(320, 240, seed), "JPEG", quality=92) for seed in (1, 2)]
    grey = flat_jpeg(96, 64)
    payloads = [
        photos[0],
        image_bytes(_photo(200, 300, 3), "PNG"),  # not a JPEG: Pillow
        b"\xff\xd8\xff\xe0 not really a jpeg",  # Pillow says why
        OSError("gone"),
        photos[1],
        grey,
    ]
    results = decode_on_device(payloads, 64, "cpu")
    for i in (0, 1, 4, 5):
        assert isinstance(results[i], torch.Tensor)
        assert results[i].dtype == torch.uint8 and results[i].shape == (64, 64, 3)
        reference = decode_image(payloads[i], 64).astype(np.int16)
        difference = np.abs(results[i].numpy().astype(np.int16) - reference)
        assert difference.mean() < 4, i  # the same picture; resampling differs a little
    assert isinstance(results[2], UndecodableImage) and results[2].code == "undecodable_image"
    assert isinstance(results[3], UndecodableImage) and results[3].code == "unreadable_image"


def test_over_the_pixel_limit_goes_to_pillow_which_applies_the_limits():
    huge = flat_jpeg(4096, 4096)
    small_limit = ImageLimits(max_pixels=1_000_000)
    (result,) = decode_on_device([huge], 32, "cpu", small_limit)
    # Pillow's draft decodes this sequential JPEG at 1/8 scale, within the limit.
    assert isinstance(result, torch.Tensor) and result.shape == (32, 32, 3)
    (refused,) = decode_on_device([huge], 32, "cpu", ImageLimits(max_pixels=10_000))
    assert isinstance(refused, UndecodableImage) and refused.code == "image_too_many_pixels"
    assert decode_on_device([], 32, "cpu") == []
