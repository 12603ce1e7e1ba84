"""A JPEG's frame header read from its markers alone: size, components, coding process, and how
many components its first scan holds.

Decoding reads every photo's header before its pixels: which decoder takes it, how many pixels
libjpeg will hold (:mod:`bincount.images.decode`), the original's size for the input statistics.
Pillow's ``JpegImageFile`` parses every marker in Python and builds an image object, about 20 µs
a photo; at the thousands of photos a second a GPU scores, under the decode threads' GIL, that
adds up. This walks the segment lengths to the first scan header (SOS) and reads a few fields:
2-3 µs on ABID's photos.
"""

from __future__ import annotations

from dataclasses import dataclass

_SOI = b"\xff\xd8"
# Start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_SEQUENTIAL_HUFFMAN = frozenset({0xC0, 0xC1})  # baseline and extended sequential DCT
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn and SOI carry no length
_START_OF_SCAN = 0xDA
_MAX_SEGMENTS = 512  # a real header has a dozen; a crafted one cannot make this loop long


@dataclass(frozen=True)
class JpegFrame:
    """What a JPEG's frame header declares."""

    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr or RGB, 4 CMYK or YCCK
    marker: int  # the SOFn marker: the coding process
    scan_components: int | None  # components in the first scan; None where the bytes end first

    @property
    def sequential(self) -> bool:
        """Baseline or extended sequential Huffman-coded DCT: what every decoder takes
        (progressive, lossless and arithmetic-coded JPEGs are not)."""
        return self.marker in _SEQUENTIAL_HUFFMAN


def jpeg_frame(payload: bytes) -> JpegFrame | None:
    """The frame header of a JPEG, or None for bytes that are not one or whose header is
    broken before the frame (the decoder then says why). A height of 0 is left to a DNL marker
    after the first scan: such a frame is returned as declared."""
    if payload[:2] != _SOI:
        return None
    position, end = 2, len(payload)
    frame: tuple[int, int, int, int] | None = None
    for _ in range(_MAX_SEGMENTS):
        while position < end and payload[position] == 0xFF:  # fill bytes before a marker
            position += 1
        if position >= end or payload[position - 1] != 0xFF:
            break
        marker = payload[position]
        position += 1
        if marker in _STANDALONE:
            continue
        if position + 2 > end:
            break
        length = int.from_bytes(payload[position : position + 2], "big")
        if length < 2:
            break
        if marker == _START_OF_SCAN:
            if frame is None or position + 3 > end:
                break
            return JpegFrame(*frame, scan_components=payload[position + 2])
        if marker in _FRAMES:
            if frame is not None or length < 8 or position + 8 > end:
                return None  # a second frame header: not a JPEG anybody should decode
            height = int.from_bytes(payload[position + 3 : position + 5], "big")
            width = int.from_bytes(payload[position + 5 : position + 7], "big")
            frame = (width, height, payload[position + 7], marker)
        position += length
    return None if frame is None else JpegFrame(*frame, scan_components=None)
