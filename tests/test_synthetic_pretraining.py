"""Synthetic pretraining: rendered bins, the same whoever renders them, trained on before the
manifest's bins, and recorded in the model's lineage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bincount.images.decode import decode_image
from bincount.model.config import TrainConfig
from bincount.model.registry import read_model_record
from bincount.model.synthetic import synthetic_split
from bincount.model.training import train_model
from bincount.synth import bin_id, make_bin
from bincount.testing.pipeline import tiny_config


def test_synthetic_bins_are_the_same_whoever_renders_them():
    alone = synthetic_split(bins=70, size=32, max_count=5, seed=3, workers=1)
    shared = synthetic_split(bins=70, size=32, max_count=5, seed=3, workers=2)  # two chunks
    everything = np.arange(70)
    np.testing.assert_array_equal(alone.read(everything), shared.read(everything))
    np.testing.assert_array_equal(alone.labels, shared.labels)
    assert alone.read(everything).shape == (70, 32, 32, 3) and alone.labels.max() <= 5
    assert len(set(alone.labels.tolist())) > 2  # counts drawn as real bins are
    # Each is the bin bincount.synth renders for that seed and ordinal, at its count, squashed
    # as the image cache squashes a real photo (held as a JPEG: within a few grey levels).
    record, jpeg, _ = make_bin(seed=3, ordinal=69, bin_id=bin_id(69), max_count=5)
    assert alone.labels[69] == record.count
    held = alone.read(np.array([69]))[0].astype(int)
    assert np.abs(held - decode_image(jpeg, 32)).mean() < 3
    # Read as a cached split is: by index, into a buffer or not.
    out = np.empty((2, 32, 32, 3), np.uint8)
    np.testing.assert_array_equal(alone.read(np.array([5, 1]), out), alone.read(everything)[[5, 1]])
    # Rendered once: the next model asking for the same bins gets those already held.
    assert synthetic_split(bins=70, size=32, max_count=5, seed=3, workers=2).photos is shared.photos
    with pytest.raises(ValueError, match="at least 1 synthetic bin"):
        synthetic_split(bins=0, size=32, max_count=5)


def test_a_model_pretrained_on_synthetic_bins_records_it(cached_manifest):
    output, manifest = cached_manifest
    config = tiny_config(synthetic_bins=48, synthetic_epochs=2, max_minutes=60)
    result = train_model(output, config, manifest_version=manifest)
    record = read_model_record(output, result.version)
    pretraining = record.lineage.model_dump()["synthetic_pretraining"]
    assert (pretraining["bins"], pretraining["epochs"]) == (48, 2)
    # Its share of the hour, by steps: 2 epochs of 3 batches (48 bins, 16 a batch) against
    # the real epoch's whole batches.
    real_steps = 60 * 6 / pretraining["budget_minutes"] - 6
    assert real_steps >= 1 and real_steps == pytest.approx(round(real_steps), abs=0.05)
    assert len(pretraining["train_loss"]) == 2 and all(
        np.isfinite(loss) for loss in pretraining["train_loss"]
    )
    assert record.config.synthetic_bins == 48
    # Another model than the one trained without it (and found, not trained, the second time).
    plain = train_model(output, tiny_config(), manifest_version=manifest)
    assert plain.version != result.version
    assert (
        "synthetic_pretraining" not in read_model_record(output, plain.version).lineage.model_dump()
    )
    again = train_model(output, config, manifest_version=manifest)
    assert (again.version, again.created) == (result.version, False)


def test_the_real_epochs_get_what_the_synthetic_ones_left_of_the_budget():
    from bincount.model.synthetic import real_epochs_budget

    config = tiny_config(synthetic_bins=48, max_minutes=10)
    assert real_epochs_budget(config, {"seconds": 120.0}).max_minutes == pytest.approx(8.0)
    assert real_epochs_budget(config, None) is config  # not pretrained (or resumed without)
    unbounded = tiny_config(synthetic_bins=48)
    assert real_epochs_budget(unbounded, {"seconds": 120.0}).max_minutes is None


def test_the_fields_leave_earlier_versions_as_they_were():
    assert TrainConfig().fingerprint("m") == TrainConfig(synthetic_bins=0).fingerprint("m")
    assert TrainConfig(synthetic_bins=100).fingerprint("m") != TrainConfig().fingerprint("m")
    with pytest.raises(ValueError):
        TrainConfig(synthetic_bins=-1)


def test_every_real_batch_can_carry_synthetic_bins_after_the_synthetic_epochs(cached_manifest):
    from bincount.images.shards import load_cached_splits
    from bincount.model.device import resolve_runtime
    from bincount.model.networks import build_model
    from bincount.model.synthetic import mixed_batches

    output, manifest = cached_manifest
    config = tiny_config(synthetic_bins=48, synthetic_epochs=1, synthetic_mix=0.25, max_count=5)
    train = load_cached_splits(output, manifest, config.image_size, ("train",))["train"]
    model = build_model(config)
    batches = mixed_batches(model, train, config, resolve_runtime("cpu"))
    synthetic_share = round(config.batch_size * 0.25)
    # As many batches as the real bins make at the smaller real share, each the full size:
    # the real bins' counts first, then the synthetic bins'.
    assert len(batches) == len(train) // (config.batch_size - synthetic_share) >= 1
    first = list(batches)
    assert len(first) == len(batches)
    synthetic = synthetic_split(bins=48, size=config.image_size, max_count=5)
    drawn = []
    for images, counts in first:
        assert images.shape[0] == counts.shape[0] == config.batch_size
        assert set(counts[-synthetic_share:].tolist()) <= set(synthetic.labels.tolist())
        drawn.append(counts[-synthetic_share:])
    # The same epoch again is the same batches (resumable); the next draws other bins.
    again = list(batches)
    for (images, counts), (images_again, counts_again) in zip(first, again, strict=True):
        assert torch.equal(images, images_again) and torch.equal(counts, counts_again)
    batches.epoch = 1
    assert any(
        not torch.equal(images, later)
        for (images, _), (later, _) in zip(first, list(batches), strict=True)
    )
    # A model trained so records it, and trains as any other.
    result = train_model(output, config, manifest_version=manifest)
    assert read_model_record(output, result.version).config.synthetic_mix == 0.25
    assert result.history and all(np.isfinite(row["train_loss"]) for row in result.history)


def test_a_synthetic_mix_needs_synthetic_bins_and_room_in_the_batch():
    with pytest.raises(ValueError, match="synthetic_bins with synthetic_mix"):
        TrainConfig(synthetic_mix=0.25)
    with pytest.raises(ValueError, match="at least one real and one synthetic"):
        TrainConfig(synthetic_bins=10, synthetic_mix=0.01, batch_size=16)
    with pytest.raises(ValueError, match="cache_trunk false"):
        TrainConfig(
            synthetic_bins=10, synthetic_mix=0.25, pretrained=True, frozen_blocks=2,
            arch="tf_efficientnet_lite0",
        )  # fmt: skip
    assert TrainConfig(synthetic_bins=10).fingerprint("m") == TrainConfig(
        synthetic_bins=10, synthetic_mix=0.0
    ).fingerprint("m")
