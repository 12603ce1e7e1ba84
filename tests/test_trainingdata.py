"""The training data path: the cache read shard by shard (locally, and from S3 through the spill
folder), each rank its share of a fully mixed epoch, and the device-side input (run on the CPU
here: the same code a GPU runs, minus pinned memory)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bincount.core.storage import Location
from bincount.images.shards import load_cached_splits
from bincount.model.inputs import BatchLoader, augment_batch, ids_fingerprint, to_model_input
from bincount.testing.caches import image_numbers, write_generated_cache

SIZE = 16


@pytest.fixture
def cache(tmp_path) -> Location:
    """70 generated images in 5 shards of 16 (the last short), splits mixed in every shard."""
    output = Location(str(tmp_path / "out"))
    write_generated_cache(output, "m1", size=SIZE, images=70, shard_size=16, seed=6)
    return output


def _numbers(split) -> np.ndarray:
    return np.array([int(image_id) for image_id in split.image_ids])


def test_each_rank_reads_its_share_and_the_epoch_covers_every_image_once(cache):
    train = load_cached_splits(cache, "m1", SIZE, ("train",))["train"]
    assert len(train) == 54  # even: no rank pads its share with a repeated image
    by_label = dict(zip(_numbers(train), train.labels, strict=True))
    by_number = dict(zip(_numbers(train), train.image_ids, strict=True))
    epochs = []
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            loader = BatchLoader(train, batch_size=8, shuffle=True, seed=5, rank=rank, world_size=2)
            loader.epoch = epoch
            read = []
            for images, counts in loader.raw_batches():
                assert images.dtype == torch.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
                numbers = image_numbers(images.numpy())
                assert [by_label[n] for n in numbers] == counts.tolist()
                read.extend(numbers.tolist())
            # The line a distributed run logs names the images the batches held.
            assert loader.share_line() == (
                f"rank {rank} of 2, epoch {epoch + 1}: 27 of 54 training images in 4 batches, "
                f"ids fingerprint {ids_fingerprint(by_number[n] for n in read)}"
            )
            seen.extend(read)
        assert sorted(seen) == sorted(_numbers(train).tolist())  # every image, exactly once
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    # Mixed across shards: the first batch already holds images of several shards.
    assert len({n // 16 for n in epochs[0][:8]}) >= 3


def test_reads_give_the_pixels_that_were_cached(cache):
    splits = load_cached_splits(cache, "m1", SIZE, ("train", "val", "test"))
    assert sum(len(s) for s in splits.values()) == 70
    shards = [np.load(cache.path(f"cache/m1/{SIZE}/shard-{n:05d}.npy")) for n in range(5)]
    everything = np.concatenate(shards)
    for split in splits.values():
        picked = np.array([len(split) - 1, 0, 1, 2, len(split) // 2])  # runs and jumps
        np.testing.assert_array_equal(split.read(picked), everything[_numbers(split)[picked]])
    with pytest.raises(ValueError, match=r"Expected a uint8 buffer"):
        splits["val"].read(np.array([0, 1]), out=np.empty((3, SIZE, SIZE, 3), np.uint8))


def test_s3_shards_are_staged_once_in_the_spill_folder(s3_server, bucket, tmp_path):
    from bincount.testing.s3server import TEST_CREDENTIALS

    output = Location(
        f"s3://{bucket}/out",
        endpoint_url=s3_server.endpoint_url,
        key=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    write_generated_cache(output, "m1", size=SIZE, images=40, shard_size=16, seed=4)
    spill = tmp_path / "spill"
    train = load_cached_splits(output, "m1", SIZE, ("train",), spill=str(spill))["train"]
    staged = sorted(str(p) for p in spill.rglob("*.npy"))
    assert len(staged) == 3  # one copy per shard, nothing else
    numbers = image_numbers(train.read(np.arange(len(train))))
    assert numbers.tolist() == _numbers(train).tolist()
    stamps = {path: os.stat(path).st_mtime_ns for path in staged}

    again = load_cached_splits(output, "m1", SIZE, ("train",), spill=str(spill))["train"]
    assert {path: os.stat(path).st_mtime_ns for path in staged} == stamps  # reused
    np.testing.assert_array_equal(again.read(np.arange(3)), train.read(np.arange(3)))

    # A rebuilt cache (new objects) is staged afresh and the stale copies go.
    write_generated_cache(output, "m1", size=SIZE, images=40, shard_size=16, seed=5)
    rebuilt = load_cached_splits(output, "m1", SIZE, ("train",), spill=str(spill))["train"]
    assert len(list(spill.rglob("*.npy"))) == 3
    assert set(map(str, spill.rglob("*.npy"))).isdisjoint(staged)
    assert image_numbers(rebuilt.read(np.arange(len(rebuilt)))).tolist() == (
        _numbers(rebuilt).tolist()
    )


def test_device_side_augmentation_keeps_shape_and_is_deterministic_for_a_seed():
    images = torch.randint(0, 256, (6, SIZE, SIZE, 3), dtype=torch.uint8)

    def run(seed: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        return to_model_input(images, device="cpu", augment=generator, mean=(0.5,) * 3)

    first, again, other = run(1), run(1), run(2)
    assert first.shape == (6, 3, SIZE, SIZE) and first.dtype == torch.float32
    assert first.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    plain = to_model_input(images, mean=(0.5,) * 3)
    assert not torch.equal(first, plain) and plain.shape == first.shape
    # Flips only move pixels: with brightness and contrast at 1 the pixel values are kept.
    floats = images.permute(0, 3, 1, 2).float().div(255)
    augmented = augment_batch(floats.clone(), torch.Generator().manual_seed(0))
    assert augmented.min() >= 0 and augmented.max() <= 1 and augmented.shape == floats.shape
    with pytest.raises(ValueError, match=r"Expected uint8 images \(N, S, S, 3\)"):
        to_model_input(floats)


def test_the_consumer_side_conversion_a_gpu_uses_gives_the_same_batches(cache):
    train = load_cached_splits(cache, "m1", SIZE, ("train",))["train"]
    loader = BatchLoader(
        train, batch_size=8, shuffle=True, seed=2, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    loader.epoch = 3
    in_thread = list(loader)  # CPU: converted in the reading thread
    in_consumer = list(loader._on_device(loader.raw_batches(), loader.generator()))
    assert len(in_thread) == len(in_consumer) == len(loader)
    for (a, counts_a), (b, counts_b) in zip(in_thread, in_consumer, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert torch.equal(counts_a, counts_b)
    assert loader.wait_seconds >= 0
