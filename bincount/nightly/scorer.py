"""The champion as a scorer: loading it, decoding a chunk's images (threads or on the device) and
predicting counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from bincount.core.limits import ImageLimits
from bincount.core.storage import Location
from bincount.images.decode import UndecodableImage, decode_image, decode_or_reason
from bincount.images.devicedecode import DeviceBatch, DeviceDecoder
from bincount.images.prefetch import Prefetched
from bincount.images.stats import statistics_table
from bincount.model.device import Runtime, resolve_runtime
from bincount.model.inputs import input_normalization, to_model_input
from bincount.model.networks import CountingModel
from bincount.model.prediction import predict_batch
from bincount.model.registry import load_model, resolve_version

logger = logging.getLogger(__name__)


# -- the model ---------------------------------------------------------------------------------
@dataclass
class Scorer:
    """A registered model ready to count: its input size and test-time flips come from its
    saved config, so it scores exactly as it was evaluated."""

    model: CountingModel
    version: str
    image_size: int
    flips: bool
    runtime: Runtime
    # On a GPU, the share of JPEGs decoded by Pillow on the host's cores beside the device's
    # decoder; None follows the two sides' measured rates.
    host_share: float | None = None

    @property
    def max_count(self) -> int:
        return self.model.max_count

    @property
    def open_top(self) -> bool:
        return self.model.open_top

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 images (N, S, S, 3), on the host or the device → calibrated per-count
        probabilities (N, num_classes)."""
        mean, std = input_normalization(self.model)
        batch = to_model_input(images, mean=mean, std=std, device=self.runtime.device)
        _, probabilities = predict_batch(self.model, batch, runtime=self.runtime, flips=self.flips)
        return probabilities.numpy()

    def counts(self, probabilities: np.ndarray) -> np.ndarray:
        """The count the model's head predicts from per-count probabilities."""
        return self.model.count_from_probabilities(torch.from_numpy(probabilities)).numpy()


def load_scorer(output: Location, model: str = "champion", *, device: str | None = None) -> Scorer:
    """A registered model (a version, or ``champion``) on the best device present."""
    version = resolve_version(output, model)
    network, record = load_model(output, version)
    runtime = resolve_runtime(device)
    network = network.to(runtime.device, memory_format=torch.channels_last).eval()
    config = record.config
    return Scorer(
        model=network,
        version=version,
        image_size=config.image_size,
        flips=config.test_time_flips,
        runtime=runtime,
    )


# -- images ahead of the model ------------------------------------------------------------------
@dataclass
class DecodedBatch:
    """Images of one batch that decoded, and the keys of those that did not, with why."""

    keys: list[str]
    images: np.ndarray | torch.Tensor  # uint8 (N, S, S, 3); a tensor when decoded on a device
    failures: list[tuple[str, UndecodableImage]]
    statistics: pa.Table  # bincount.images.stats.INPUT_STATISTICS of each decoded image
    on_host: int = 0  # on a device: the images Pillow decoded on the host's cores


def decoded_batches(
    source: Location,
    keys: Sequence[str],
    *,
    size: int,
    batch_size: int,
    concurrency: int = 64,
    workers: int | None = None,
    depth: int = 4,
    limits: ImageLimits | None = None,
    device: torch.device | str | None = None,
    host_share: float | None = None,
    device_decode: bool | None = None,
) -> Iterator[DecodedBatch]:
    """Batches of decoded images, fetched and decoded ahead of the consumer in two threads.

    Pillow releases the GIL while it decodes, so a thread pool decodes in parallel without the
    cost of shipping images between processes. On a CUDA ``device`` each batch is split between
    the device's JPEG decoder and that pool (:mod:`bincount.images.devicedecode`; ``host_share``
    fixes Pillow's share, else it follows the two sides' rates), and the consumer's stream waits
    for a batch without the host waiting; ``device_decode`` chooses that path on any device (the
    tests take it on the CPU). No image is read past ``limits.max_bytes``.
    """
    if device_decode is None:
        device_decode = device is not None and torch.device(device).type == "cuda"
    on_device = device_decode and device is not None
    limits = limits or ImageLimits()
    windows = [list(keys[i : i + batch_size]) for i in range(0, len(keys), batch_size)]

    def fetched() -> Iterator[tuple[list[str], list[bytes | Exception]]]:
        for window in windows:
            yield (
                window,
                source.fetch_many(window, concurrency=concurrency, max_bytes=limits.max_bytes),
            )

    def decoded() -> Iterator[tuple[list[str], DecodedBatch | DeviceBatch]]:
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoder = (
                DeviceDecoder(size, device, pool=pool, limits=limits, host_share=host_share)
                if on_device
                else None
            )
            for window, payloads in Prefetched(fetched(), depth=depth, name="image-fetch"):
                if decoder is not None:
                    yield window, decoder.decode(payloads)
                    continue
                results = pool.map(
                    decode_or_reason, payloads, [size] * len(payloads), [limits] * len(payloads)
                )
                yield window, _batch_of(window, list(results), size, payloads)

    decoded_images = on_host = 0
    for window, batch in Prefetched(decoded(), depth=depth, name="image-decode"):
        if isinstance(batch, DeviceBatch):  # here, on the consumer's thread and stream
            batch = DecodedBatch(
                keys=[window[i] for i in batch.positions],
                images=batch.wait(),
                failures=[(window[i], failure) for i, failure in batch.failures],
                statistics=batch.statistics,
                on_host=batch.on_host,
            )
        decoded_images, on_host = decoded_images + len(batch.keys), on_host + batch.on_host
        yield batch
    if on_device:
        logger.debug(
            "decoded %d images for %s: %d by Pillow on the host's cores, the rest on the device",
            decoded_images,
            device,
            on_host,
        )


def _batch_of(
    keys: list[str],
    results: list[np.ndarray | UndecodableImage],
    size: int,
    payloads: list[bytes | Exception],
) -> DecodedBatch:
    triples = list(zip(keys, results, payloads, strict=True))
    good = [t for t in triples if not isinstance(t[1], UndecodableImage)]
    images = (
        np.stack([image for _, image, _ in good])
        if good
        else np.zeros((0, size, size, 3), np.uint8)
    )
    return DecodedBatch(
        keys=[key for key, _, _ in good],
        images=images,
        failures=[(key, fault) for key, fault, _ in triples if isinstance(fault, UndecodableImage)],
        # Input drift's statistics, taken on the pixels the model gets.
        statistics=statistics_table(images, [payload for _, _, payload in good]),
    )


# -- ad hoc -----------------------------------------------------------------------------------
def predict_images(
    scorer: Scorer, inputs: Sequence[str], *, read: Callable[[str], bytes]
) -> list[dict]:
    """Count the items in each input (a path or URL that ``read`` turns into bytes).

    One answer per input, in order: the count, per-count probabilities, confidence and model
    version, or the error that stopped it (an input that cannot be read or decoded).
    """
    answers: list[dict] = [{"input": name} for name in inputs]
    decoded: list[tuple[int, np.ndarray]] = []
    for position, name in enumerate(inputs):
        try:
            decoded.append((position, decode_image(read(name), scorer.image_size)))
        except (OSError, ValueError) as error:  # missing, forbidden, undecodable
            answers[position]["error"] = f"{type(error).__name__}: {error}"
    if decoded:
        probabilities = scorer.probabilities(np.stack([image for _, image in decoded]))
        counts = scorer.counts(probabilities)
        for (position, _), row, count in zip(decoded, probabilities, counts, strict=True):
            answers[position].update(
                count=int(count),
                probabilities=[round(float(p), 6) for p in row],
                confidence=round(float(row[count]), 6),
                model_version=scorer.version,
            )
    return answers
