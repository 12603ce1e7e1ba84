"""Safe decoding of bin photos: size and pixel limits checked before pixels are held, a reason for
every image refused.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, JpegImagePlugin

from bincount.core.faults import read_fault
from bincount.core.fetch import ObjectTooLarge
from bincount.core.limits import ImageLimits
from bincount.images.jpeg import jpeg_frame


class UndecodableImage(ValueError):
    """An image that was not decoded: ``code`` is its stable reason code, ``exception_type``
    the error that decided it."""

    def __init__(self, code: str, reason: str, exception_type: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.exception_type = exception_type or type(self).__name__

    def __reduce__(self):  # returned from the cache's decoding processes
        return type(self), (self.code, self.reason, self.exception_type)


def decode_image(payload: bytes, size: int, limits: ImageLimits | None = None) -> np.ndarray:
    """JPEG (or PNG, WebP, ...) bytes → uint8 array (size, size, 3), aspect not kept.

    Squashing instead of cropping keeps every item in the frame: a crop could cut one out and
    change the count. ``draft`` lets libjpeg decode at a reduced scale, several times faster,
    and keeps a huge JPEG within ``limits.max_pixels``. Raises :class:`UndecodableImage`.
    """
    limits = limits or ImageLimits()
    if len(payload) > limits.max_bytes:
        raise UndecodableImage(
            "image_too_large",
            f"Expected an image of at most {limits.max_bytes:,} bytes, but got {len(payload):,}",
        )
    try:
        with _open_image(payload) as image:
            declared = image.size
            image.draft("RGB", (size, size))
            pixels = _pixels_held(image, declared, payload)
            if pixels > limits.max_pixels:
                raise UndecodableImage(
                    "image_too_many_pixels",
                    f"Expected an image that decodes to at most {limits.max_pixels:,} pixels, "
                    f"but {declared[0]}x{declared[1]} decodes to {pixels:,}",
                )
            rgb = image.convert("RGB")
            return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except UndecodableImage:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own bound, for formats it opens
        raise UndecodableImage(
            "image_too_many_pixels",
            f"Expected an image within Pillow's decompression bomb bound, but {error}",
            type(error).__name__,
        ) from None
    except MemoryError:
        raise
    except Exception as error:  # Pillow's plugins raise many types for broken bytes
        raise UndecodableImage(
            "undecodable_image",
            f"Expected a decodable image, but {type(error).__name__}: {error}",
            type(error).__name__,
        ) from None


def _open_image(payload: bytes) -> Image.Image:
    """The image's header, not its pixels. A JPEG opens without Pillow's process-wide bomb
    check, which would refuse a huge JPEG that ``draft`` can still decode small; the pixel
    limit applies after ``draft`` instead."""
    if payload[:3] == b"\xff\xd8\xff":
        return JpegImagePlugin.JpegImageFile(io.BytesIO(payload))
    return Image.open(io.BytesIO(payload), formats=IMAGE_FORMATS)


def _pixels_held(image: Image.Image, declared: tuple[int, int], payload: bytes) -> int:
    """Pixels the decoder holds: a sequential, interleaved JPEG's at its draft scale; any other
    at full size (libjpeg keeps every coefficient of a progressive or multi-scan JPEG)."""
    width, height = image.size
    if image.format == "JPEG" and _decodes_row_by_row(payload):
        return width * height
    return declared[0] * declared[1]


def _decodes_row_by_row(payload: bytes) -> bool:
    """Whether a JPEG is sequential and its first scan holds every component (read from its
    frame and scan headers); anything unexpected answers no."""
    frame = jpeg_frame(payload)
    return (
        frame is not None
        and frame.marker in _SEQUENTIAL_JPEG
        and frame.scan_components == frame.components
    )


def decode_or_reason(
    payload: bytes | Exception, size: int, limits: ImageLimits | None = None
) -> np.ndarray | UndecodableImage:
    """The decoded image, or why there is none (a fetch error, the limits, undecodable bytes).
    A fault of reading keeps its fault code (:data:`~bincount.core.faults.FAULT_CODES`): the
    image is left pending, not quarantined."""
    fault = read_fault(payload)
    if fault is not None:
        return UndecodableImage(fault.code, fault.reason, fault.exception_type)
    if isinstance(payload, ObjectTooLarge):
        return UndecodableImage("image_too_large", str(payload), type(payload).__name__)
    if isinstance(payload, Exception):
        return UndecodableImage(
            "unreadable_image",
            f"Expected a readable image object, but got {payload!r}",
            type(payload).__name__,
        )
    try:
        return decode_image(payload, size, limits)
    except UndecodableImage as error:
        return error


# What scoring and the cache decode: JPEG (ABID's format) and a few common formats. Anything
# else (EPS, PDF, ...) is refused rather than handed to a plugin that may shell out.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


# Frame markers of sequential JPEGs, which libjpeg decodes a row of blocks at a time.
_SEQUENTIAL_JPEG = (0xC0, 0xC1, 0xC9)
