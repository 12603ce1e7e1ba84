"""Decode JPEGs where the model runs: on a GPU, nvJPEG through ``torchvision.io.decode_jpeg``.

On a GPU the CPU's Pillow decoding (about 1.2 ms of CPU per bin photo, bench/score.py) becomes
the limit of scoring long before the model does; nvJPEG decodes a whole batch in one call and
the pixels never cross back to the host. What the device decoder does not take goes through
Pillow (:func:`~bincount.images.decode.decode_or_reason`) as before: other formats, JPEGs over the
pixel limit (Pillow can still decode a sequential one small with ``draft``; nvJPEG decodes at
full size), and anything nvJPEG refuses; Pillow also says why an image has no pixels.

The result differs slightly from Pillow's: Pillow first lets libjpeg scale the DCT down
(``draft``), then resizes; here the image is decoded whole, then resized with antialiased
bilinear interpolation. The same code runs on the CPU (``device="cpu"``, libjpeg-turbo), which
is how the tests exercise it. On an H100 the decoded images matched Pillow's to 0.3-0.9 grey
levels per pixel on average, at about 2,600 images/s for a batch (bench/README.md, "Scoring on
the GPU").
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from PIL import JpegImagePlugin
from torch.nn import functional as F

from bincount.core.limits import ImageLimits
from bincount.images.decode import UndecodableImage, decode_or_reason
from bincount.images.vision import torchvision

logger = logging.getLogger(__name__)

_JPEG = b"\xff\xd8\xff"


def decode_on_device(
    payloads: list[bytes | Exception],
    size: int,
    device: torch.device | str,
    limits: ImageLimits | None = None,
) -> list[torch.Tensor | UndecodableImage]:
    """Each payload as uint8 (size, size, 3) on ``device``, or why it has none, in order."""
    limits = limits or ImageLimits()
    device = torch.device(device)
    results: list[torch.Tensor | UndecodableImage | None] = [None] * len(payloads)
    chosen = [i for i, payload in enumerate(payloads) if _for_the_device(payload, limits)]
    decoded = _decode_jpegs([payloads[i] for i in chosen], device)
    for i, image in zip(chosen, decoded, strict=True):
        if image is not None:
            results[i] = _resized(image, size)
    for i, result in enumerate(results):
        if result is None:  # Pillow on the CPU: decodes what it can, names what it cannot
            fallback = decode_or_reason(payloads[i], size, limits)
            if isinstance(fallback, np.ndarray):
                fallback = torch.tensor(fallback, device=device)
            results[i] = fallback
    return results  # type: ignore[return-value]


def _for_the_device(payload: bytes | Exception, limits: ImageLimits) -> bool:
    """A JPEG within the byte and (full-size) pixel limits, by its header alone."""
    if isinstance(payload, Exception) or payload[:3] != _JPEG or len(payload) > limits.max_bytes:
        return False
    try:
        with JpegImagePlugin.JpegImageFile(io.BytesIO(payload)) as image:
            width, height = image.size
            return image.mode in ("RGB", "L") and width * height <= limits.max_pixels
    except Exception:  # a broken header: Pillow's path says why
        return False


def _decode_jpegs(payloads: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 images on ``device``; None for each one the decoder refused."""
    if not payloads:
        return []
    tensors = [torch.frombuffer(bytearray(payload), dtype=torch.uint8) for payload in payloads]
    rgb = torchvision.io.ImageReadMode.RGB
    try:  # one call for the batch; an error in one image fails the whole call
        return list(torchvision.io.decode_jpeg(tensors, mode=rgb, device=device))
    except RuntimeError:
        decoded: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                decoded.append(torchvision.io.decode_jpeg(tensor, mode=rgb, device=device))
            except RuntimeError as error:
                logger.debug("the device decoder refused a JPEG (%s): Pillow decodes it", error)
                decoded.append(None)
        return decoded


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 → (size, size, 3) uint8, squashed as Pillow's path squashes it."""
    floats = image.unsqueeze(0).float()
    resized = F.interpolate(floats, size=(size, size), mode="bilinear", antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()
