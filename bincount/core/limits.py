"""What one object may be before it is quarantined instead of parsed or decoded.

The defaults are the settings' defaults (``BINCOUNT_MAX_METADATA_BYTES`` and the others): one
place for both, so the library used directly and the flows behave alike.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_METADATA_BYTES = 1 << 20  # 1 MiB: ABID objects are a few KB
MAX_METADATA_DEPTH = 32  # ABID objects nest 4 levels deep
# Python's json decoder recurses once a level, within the interpreter's limit (1000 frames).
METADATA_DEPTH_CEILING = 500
MAX_IMAGE_BYTES = 16 << 20  # 16 MiB: ABID photos are tens of KB
MAX_IMAGE_PIXELS = 50_000_000  # a 50-megapixel photo decodes whole


@dataclass(frozen=True)
class MetadataLimits:
    """The largest metadata object read, in bytes, and the deepest JSON nesting parsed."""

    max_bytes: int = MAX_METADATA_BYTES
    max_depth: int = MAX_METADATA_DEPTH

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"Expected max_bytes >= 1, but got {self.max_bytes}")
        if not 1 <= self.max_depth <= METADATA_DEPTH_CEILING:
            raise ValueError(
                f"Expected max_depth in 1..{METADATA_DEPTH_CEILING}, but got {self.max_depth}"
            )


@dataclass(frozen=True)
class ImageLimits:
    """The largest image object read, in bytes, and the most pixels one image decodes to.

    A JPEG counts at the reduced scale ``draft`` decodes it at, unless its decoder must hold
    the whole image anyway (progressive or multi-scan); any other format counts whole.
    """

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"Expected max_bytes >= 1, but got {self.max_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"Expected max_pixels >= 1, but got {self.max_pixels}")
