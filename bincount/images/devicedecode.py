"""Decode a batch of JPEGs for a model on a GPU: nvJPEG on a stream of its own and Pillow threads
on the host's cores, both at once, the pixels ending on the device.

On a GPU, decoding, not the model, bounds scoring: on an H100 nvJPEG alone decoded bin photos at
about 2,600 images/s, queued on the model's stream, so that neither overlapped the other
(bench/README.md, "Scoring on the GPU"). Here each batch is split in two:

* JPEGs that nvJPEG takes (sequential Huffman-coded, grey or three components, within the pixel
  limit, by their header alone: :mod:`bincount.images.jpeg`) go to ``torchvision.io.decode_jpeg``
  on the device, issued on the decoder's own CUDA stream, so they decode while the model runs
  the batch before;
* a share of those JPEGs, and everything nvJPEG does not take (progressive JPEGs, other formats,
  JPEGs over the pixel limit, which Pillow's ``draft`` decodes small, anything nvJPEG refuses,
  bytes that name their own fault) go to Pillow in a thread pool, into pinned host memory,
  then to the device without blocking, on the same stream.

The share follows the two sides' measured rates, batch by batch, so that both finish together
(``host_share`` fixes it instead: 0 sends the device every JPEG it takes). The input statistics
of drift monitoring are taken on the device too; four numbers an image come back. The batch
carries a CUDA event: the model's stream waits on it instead of the host waiting for the decode.

The two decoders' pixels differ slightly: Pillow lets libjpeg scale the DCT down (``draft``),
then resizes; nvJPEG decodes the image whole, then it is resized with antialiased bilinear
interpolation. On an H100 the device's images matched Pillow's to 0.3-0.9 grey levels per pixel
on average. Which side decodes an image depends on the measured rates, so a photo scored twice
may differ in the last digits of its probabilities, as GPU scoring already does (cuDNN picks
its kernels by timing, bf16). The same code runs on the CPU (``device="cpu"``, libjpeg-turbo
through torchvision, no stream), which is how the tests exercise it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.nn import functional as F

from bincount.core.limits import ImageLimits
from bincount.images.decode import UndecodableImage, decode_or_reason
from bincount.images.jpeg import jpeg_frame
from bincount.images.stats import statistics_table
from bincount.images.vision import has_image_codecs, torchvision

logger = logging.getLogger(__name__)

# The adaptive share stays inside these bounds so that both sides keep being measured.
_SHARE_BOUNDS = (0.05, 0.95)
_SMOOTHING = 0.3  # weight of the latest batch in the share


@dataclass
class DeviceBatch:
    """One batch decoded for the device: the images that decoded, in the payloads' order, and
    why the others did not."""

    positions: list[int]  # the payloads the images are of
    images: torch.Tensor  # uint8 (len(positions), S, S, 3) on the device
    failures: list[tuple[int, UndecodableImage]]
    statistics: pa.Table  # bincount.images.stats.INPUT_STATISTICS of each image
    ready: torch.cuda.Event | None  # recorded on the decoder's stream after the last of it
    on_host: int  # images Pillow decoded

    def wait(self) -> torch.Tensor:
        """The images, usable on the current stream: it waits for the decoder's stream (the
        host does not), and the allocator keeps their memory until the current stream is done
        with them."""
        if self.ready is not None:
            current = torch.cuda.current_stream(self.images.device)
            current.wait_event(self.ready)
            self.images.record_stream(current)
        return self.images


class DeviceDecoder:
    """Decodes batches for a model on ``device``, splitting each between the device's JPEG
    decoder and Pillow threads in ``pool``."""

    def __init__(
        self,
        size: int,
        device: torch.device | str,
        *,
        pool: Executor,
        limits: ImageLimits | None = None,
        host_share: float | None = None,
    ) -> None:
        if host_share is not None and not 0.0 <= host_share <= 1.0:
            raise ValueError(f"Expected a host share in [0, 1], but got {host_share}")
        self.size, self.pool = size, pool
        self.device = torch.device(device)
        self.limits = limits or ImageLimits()
        self.fixed = host_share is not None
        self.host_share = 0.5 if host_share is None else host_share
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None

    def decode(self, payloads: list[bytes | Exception]) -> DeviceBatch:
        takes = [i for i, payload in enumerate(payloads) if self._takes(payload)]
        cut = len(takes) - round(self.host_share * len(takes))
        on_device, on_host = takes[:cut], sorted(set(range(len(payloads))) - set(takes[:cut]))

        started = time.perf_counter()
        finished: list[float] = []
        pending = {i: self._on_pillow(payloads[i], finished) for i in on_host}
        images: dict[int, torch.Tensor] = {}
        with self._on_stream():
            decoded = _decode_jpegs([payloads[i] for i in on_device], self.device)
            for i, image in zip(on_device, decoded, strict=True):
                if image is None:  # refused after all: Pillow decodes it or says why
                    pending[i] = self._on_pillow(payloads[i], finished)
                else:
                    images[i] = _resized(image, self.size)
            if self.stream is not None:
                self.stream.synchronize()  # the device side's time, for the share
            device_seconds = time.perf_counter() - started
            results = {i: future.result() for i, future in pending.items()}
            host_seconds = (max(finished) if finished else time.perf_counter()) - started
            images.update(self._to_device(results))
            positions = sorted(images)
            batch = (
                torch.stack([images[i] for i in positions])
                if positions
                else torch.zeros(
                    (0, self.size, self.size, 3), dtype=torch.uint8, device=self.device
                )
            )
            statistics = statistics_table(batch, [payloads[i] for i in positions])  # type: ignore[misc]
            ready = None
            if self.stream is not None:
                ready = torch.cuda.Event()
                ready.record(self.stream)
        refused = len(results) - len(on_host)
        self._learn(
            takes=len(takes),
            others=len(payloads) - len(takes),
            device=(len(on_device) - refused, device_seconds),
            host=(len(results), host_seconds),
        )
        return DeviceBatch(
            positions=positions,
            images=batch,
            failures=[
                (i, r) for i, r in sorted(results.items()) if isinstance(r, UndecodableImage)
            ],
            statistics=statistics,
            ready=ready,
            on_host=sum(1 for r in results.values() if not isinstance(r, UndecodableImage)),
        )

    def results(self, payloads: list[bytes | Exception]) -> list[torch.Tensor | UndecodableImage]:
        """Each payload's image (uint8 (S, S, 3) on the device) or why it has none, in order."""
        batch = self.decode(payloads)
        images = batch.wait()
        answers: list[torch.Tensor | UndecodableImage | None] = [None] * len(payloads)
        for j, i in enumerate(batch.positions):
            answers[i] = images[j]
        for i, failure in batch.failures:
            answers[i] = failure
        return answers  # type: ignore[return-value]

    # -- the two sides ---------------------------------------------------------------------------
    def _takes(self, payload: bytes | Exception) -> bool:
        """Whether the device decoder takes a payload, by its JPEG header alone."""
        if isinstance(payload, Exception) or len(payload) > self.limits.max_bytes:
            return False
        frame = jpeg_frame(payload)
        return (
            frame is not None
            and frame.sequential
            and frame.components in (1, 3)
            and 0 < frame.width * frame.height <= self.limits.max_pixels
        )

    def _on_pillow(self, payload: bytes | Exception, finished: list[float]) -> Future:
        future = self.pool.submit(decode_or_reason, payload, self.size, self.limits)
        future.add_done_callback(lambda _: finished.append(time.perf_counter()))
        return future

    def _to_device(
        self, results: dict[int, np.ndarray | UndecodableImage]
    ) -> dict[int, torch.Tensor]:
        """Pillow's images, stacked into pinned host memory and copied without blocking."""
        good = sorted(i for i, result in results.items() if isinstance(result, np.ndarray))
        if not good:
            return {}
        pinned = self.device.type == "cuda"
        staged = torch.empty(
            (len(good), self.size, self.size, 3), dtype=torch.uint8, pin_memory=pinned
        )
        np.stack([results[i] for i in good], out=staged.numpy())
        moved = staged.to(self.device, non_blocking=pinned)
        return {i: moved[j] for j, i in enumerate(good)}

    def _learn(
        self, *, takes: int, others: int, device: tuple[int, float], host: tuple[int, float]
    ) -> None:
        """Move the share towards the split at which both sides finish together.

        With rates d and h (images/s) and, of a batch, E JPEGs the device takes and N others
        that only Pillow takes, both finish together at share s = (hE - dN) / (E (h + d)).
        """
        (device_images, device_seconds), (host_images, host_seconds) = device, host
        if self.fixed or not device_images or not host_images or not takes:
            return
        d = device_images / max(device_seconds, 1e-6)
        h = host_images / max(host_seconds, 1e-6)
        balanced = (h * takes - d * others) / (takes * (h + d))
        share = (1 - _SMOOTHING) * self.host_share + _SMOOTHING * balanced
        self.host_share = min(max(share, _SHARE_BOUNDS[0]), _SHARE_BOUNDS[1])

    def _on_stream(self) -> contextlib.AbstractContextManager:
        return (
            torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        )


def _decode_jpegs(payloads: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """(3, H, W) uint8 images on ``device``, decoded whole; None for each one refused."""
    if not payloads:
        return []
    if device.type == "cpu" and not has_image_codecs():
        return [_decoded_whole(payload) for payload in payloads]
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


def _decoded_whole(payload: bytes) -> torch.Tensor | None:
    """The device decoder's contract on a CPU whose torchvision has no image extension (the
    CUDA wheel beside a CPU-only torch, as the tests run): the JPEG decoded whole, no ``draft``,
    by libjpeg through Pillow, so the device path's resizing and bookkeeping still run."""
    try:
        with Image.open(io.BytesIO(payload), formats=["JPEG"]) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Exception:  # Pillow's path decodes it again and names the reason
        return None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 → (size, size, 3) uint8, squashed as Pillow's path squashes it."""
    floats = image.unsqueeze(0).float()
    resized = F.interpolate(floats, size=(size, size), mode="bilinear", antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()
