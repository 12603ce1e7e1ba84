"""What a camera did to a photo, in a few numbers cheap enough to take from every scored image.

A failed lamp, a lens out of focus or a new camera changes the pixels long before it changes
what a model predicts (a model may well count as many items in a dark photo as in a lit one).
Each statistic answers one such fault:

* ``brightness``: mean luma (Rec. 601, 0-255) of the decoded image: a lamp that dims or fails;
* ``brightness_spread``: the luma's standard deviation (global contrast): fog, glare, a flat
  exposure;
* ``colour_balance``: mean red minus mean blue over mean luma: a lamp of another colour, a
  white balance gone wrong;
* ``sharpness``: the variance of a 4-neighbour Laplacian of the luma, as decoded for the model,
  per unit of brightness squared (so a darker photo does not read as a blurred one): focus;
* ``width``, ``height``: the original's pixels, from its header: a new camera or setting;
* ``bytes_per_pixel``: the file's bytes over its pixels: JPEG quality, and detail (a blurred or
  dark photo compresses smaller).

The pixel statistics are taken on the image as the model gets it (squashed to its input size),
so they cost a few microseconds per image beside the decoding itself.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import torch
from PIL import Image, JpegImagePlugin

from bincount.images.decode import IMAGE_FORMATS
from bincount.images.jpeg import jpeg_frame

INPUT_STATISTICS = (
    "brightness",
    "brightness_spread",
    "colour_balance",
    "sharpness",
    "width",
    "height",
    "bytes_per_pixel",
)
STATISTIC_TYPES = {
    name: pa.int32() if name in ("width", "height") else pa.float32() for name in INPUT_STATISTICS
}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def image_statistics(
    images: np.ndarray | torch.Tensor,
    *,
    widths: np.ndarray,
    heights: np.ndarray,
    sizes: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each of :data:`INPUT_STATISTICS` per image: ``images`` uint8 (N, S, S, 3) as decoded, on
    the host or a device (the pixel statistics are taken where the images are), ``widths``,
    ``heights`` and ``sizes`` (bytes) of the originals, one per image."""
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"Expected uint8 images of shape (N, S, S, 3), but got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    n = len(images)
    widths, heights, sizes = (np.asarray(a, np.float64) for a in (widths, heights, sizes))
    if not widths.shape == heights.shape == sizes.shape == (n,):
        raise ValueError(
            f"Expected a width, height and size per image ({n}), but got {widths.shape}, "
            f"{heights.shape} and {sizes.shape}"
        )
    if n and (widths.min() <= 0 or heights.min() <= 0):
        raise ValueError("Expected positive widths and heights of the originals")
    pixels = pixel_statistics(images).cpu().numpy()  # the only copy back: 4 numbers an image
    return {
        **dict(zip(_PIXEL_STATISTICS, pixels.T, strict=True)),
        "width": widths,
        "height": heights,
        "bytes_per_pixel": sizes / (widths * heights),
    }


_PIXEL_STATISTICS = ("brightness", "brightness_spread", "colour_balance", "sharpness")


@torch.no_grad()
def pixel_statistics(images: torch.Tensor) -> torch.Tensor:
    """float32 (N, 4): brightness, brightness_spread, colour_balance and sharpness of uint8
    images (N, S, S, 3), computed on the images' device."""
    if not len(images):
        return torch.zeros((0, 4), dtype=torch.float32, device=images.device)
    channels = images.float()
    luma = channels @ torch.tensor(_LUMA, device=images.device)  # (N, S, S)
    brightness = luma.mean(dim=(1, 2))
    means = channels.mean(dim=(1, 2))  # (N, 3)
    laplacian = (
        luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] + luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1]
    ) - 4 * luma[:, 1:-1, 1:-1]
    scale = brightness.clamp(min=1.0)
    return torch.stack(
        [
            brightness,
            luma.std(dim=(1, 2), correction=0),
            (means[:, 0] - means[:, 2]) / scale,
            laplacian.var(dim=(1, 2), correction=0) / scale**2,
        ],
        dim=1,
    )


def original_size(payload: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image from its header alone (no pixels decoded). A JPEG
    opens without Pillow's bomb check, as it does to be decoded (:mod:`.decode`)."""
    frame = jpeg_frame(payload)
    if frame is not None and frame.width and frame.height:
        return frame.width, frame.height
    if payload[:3] == b"\xff\xd8\xff":
        image = JpegImagePlugin.JpegImageFile(io.BytesIO(payload))
    else:
        image = Image.open(io.BytesIO(payload), formats=IMAGE_FORMATS)
    with image:
        return image.size


def statistics_table(images: np.ndarray | torch.Tensor, payloads: list[bytes]) -> pa.Table:
    """:data:`INPUT_STATISTICS` columns of decoded ``images`` (on the host or a device) and
    their encoded ``payloads``."""
    sizes = [original_size(payload) for payload in payloads]
    figures = image_statistics(
        images,
        widths=np.array([w for w, _ in sizes], np.int64),
        heights=np.array([h for _, h in sizes], np.int64),
        sizes=np.array([len(payload) for payload in payloads], np.int64),
    )
    return pa.table(
        {
            name: pa.array(figures[name].astype(STATISTIC_TYPES[name].to_pandas_dtype()))
            for name in INPUT_STATISTICS
        }
    )
