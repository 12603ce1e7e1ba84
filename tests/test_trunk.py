"""A frozen trunk computed once (``frozen_blocks``): the trunk then the top is the model itself,
the trunk learns nothing and keeps its batch-norm statistics, the batches follow the loader's
order, and a model trained this way scores from photos like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bincount.images.shards import CachedSplit
from bincount.model.config import TrainConfig
from bincount.model.inputs import BatchLoader, to_model_input
from bincount.model.networks import build_model, load_pretrained_weights
from bincount.model.trunk import (
    TrunkBatches,
    compute_trunk_outputs,
    freeze_trunk,
    predict_trunk_outputs,
    run_top,
    run_trunk,
    shifted,
)


def lite0(frozen_blocks: int, *, loss: str = "ce"):
    config = TrainConfig(
        arch="tf_efficientnet_lite0",
        pretrained=True,
        frozen_blocks=frozen_blocks,
        loss=loss,
        max_count=5,
        open_top=False,
    )
    model = build_model(config)
    load_pretrained_weights(model)
    torch.nn.init.normal_(model.classifier().weight, std=0.01)  # a head that says something
    return model


def in_memory_split(images: np.ndarray, labels: np.ndarray) -> CachedSplit:
    """A cached split whose reads come from an array (the shard reader's contract)."""

    class ArrayReader:
        def read_into(self, out, shards, offsets):
            out[:] = images[offsets]

    return CachedSplit(
        labels=labels,
        image_ids=[f"{i:05d}" for i in range(len(labels))],
        shards=np.zeros(len(labels), np.int64),
        offsets=np.arange(len(labels)),
        size=images.shape[1],
        reader=ArrayReader(),
    )


@pytest.mark.parametrize("frozen_blocks", [1, 4, 5, 6])
@pytest.mark.parametrize("loss", ["ce", "ordinal"])
def test_the_trunk_then_the_top_is_the_model(frozen_blocks, loss):
    model = lite0(frozen_blocks, loss=loss).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        whole = model(images)
        parts = run_top(model, run_trunk(model, images, frozen_blocks), frozen_blocks)
    torch.testing.assert_close(parts, whole)


def test_the_trunk_takes_no_gradient_and_keeps_its_batch_norm_statistics():
    model = lite0(5)
    freeze_trunk(model, 5)
    model.train()
    trunk_before = {k: v.clone() for k, v in model.state_dict().items() if "blocks.4" in k}
    top_before = model.backbone.blocks[5][0].bn1.running_mean.clone()
    images = torch.rand(4, 3, 64, 64)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    logits = run_top(model, run_trunk(model, images, 5), 5)
    model.loss(logits, torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert all(p.grad is None for p in model.backbone.blocks[:5].parameters())
    assert model.backbone.blocks[5][0].conv_pw.weight.grad is not None
    for key, value in model.state_dict().items():
        if key in trunk_before:
            assert torch.equal(value, trunk_before[key]), key
    assert not torch.equal(model.backbone.blocks[5][0].bn1.running_mean, top_before)


def test_frozen_blocks_are_refused_outside_the_network_and_without_weights():
    with pytest.raises(ValueError, match=r"frozen_blocks within 1\.\.6"):
        freeze_trunk(lite0(0), 7)
    with pytest.raises(ValueError, match="random weights"):
        TrainConfig(arch="tf_efficientnet_lite0", frozen_blocks=5)
    with pytest.raises(ValueError, match="EfficientNet-style"):
        freeze_trunk(build_model(TrainConfig(max_count=3)), 2)


def test_the_trunks_outputs_give_the_models_logits_for_every_view():
    model = lite0(5).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    split = in_memory_split(images, np.arange(5) % 3)
    outputs = compute_trunk_outputs(
        model, split, frozen_blocks=5, flips=True, batch_size=2, device=torch.device("cpu")
    )
    assert outputs.features.shape[:2] == (3, 5) and outputs.features.dtype == torch.float16
    logits = predict_trunk_outputs(model, outputs, frozen_blocks=5, batch_size=4)
    batch = to_model_input(images, mean=model.input_mean, std=model.input_std)
    with torch.no_grad():
        expected = torch.stack([model(batch), model(batch.flip(3)), model(batch.flip(2))])
    torch.testing.assert_close(logits, expected, atol=0.02, rtol=0.02)  # float16 kept


def test_trunk_batches_follow_the_loaders_order_and_repeat_for_an_epoch():
    features = torch.arange(10, dtype=torch.float16).view(1, 10, 1, 1, 1).expand(1, 10, 2, 3, 3)
    labels = np.arange(10) % 4
    split = in_memory_split(np.zeros((10, 8, 8, 3), np.uint8), labels)
    order = BatchLoader(split, batch_size=4, shuffle=True, seed=7, drop_last=True)
    from bincount.model.trunk import TrunkOutputs

    batches = TrunkBatches(TrunkOutputs(features.contiguous(), labels), order, shift=0)
    batches.epoch = 3
    first = [(x[:, 0, 1, 1].tolist(), y.tolist()) for x, y in batches]
    again = [(x[:, 0, 1, 1].tolist(), y.tolist()) for x, y in batches]
    assert first == again and len(first) == len(order) == 2
    expected = order.indices()[:8]
    assert [int(v) for xs, _ in first for v in xs] == expected.tolist()
    assert [y for _, ys in first for y in ys] == labels[expected].tolist()


@pytest.mark.parametrize("dy,dx", [(0, 1), (1, 0), (-1, 1), (1, -1), (0, 0)])
def test_shifted_moves_the_map_and_fills_the_border_with_zeros(dy, dx):
    features = torch.arange(2 * 3 * 5 * 4, dtype=torch.float32).view(2, 3, 5, 4) + 1
    moved = shifted(features, dy, dx)
    for y in range(5):
        for x in range(4):
            source = (y - dy, x - dx)
            inside = 0 <= source[0] < 5 and 0 <= source[1] < 4
            want = features[:, :, source[0], source[1]] if inside else torch.zeros(2, 3)
            assert torch.equal(moved[:, :, y, x], want)


def test_an_uncached_trunk_trains_on_augmented_photos_and_still_learns_nothing():
    """``cache_trunk`` false: the model itself trains on the loader's augmented photos; the
    frozen trunk runs every batch, takes no gradient and keeps its batch-norm statistics."""
    from bincount.model.device import Runtime
    from bincount.model.traindata import TrainingInputs

    config = TrainConfig(
        recipe="real", frozen_blocks=2, cache_trunk=False, batch_size=4, max_count=5
    )
    model = lite0(2)
    freeze_trunk(model, 2)
    images = np.random.default_rng(1).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    splits = {
        "train": in_memory_split(images[:8], np.arange(8) % 6),
        "val": in_memory_split(images[8:], np.arange(4) % 6),
    }
    inputs = TrainingInputs.of(model, splits, config, Runtime(torch.device("cpu")))
    assert inputs.trained is model and isinstance(inputs.train, BatchLoader)
    assert inputs.train.augment == "count_preserving"
    trunk = [model.backbone.conv_stem, model.backbone.bn1, *model.backbone.blocks[:2]]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in trunk]
    top_before = model.backbone.blocks[2][0].bn1.running_mean.clone()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for batch, labels in inputs.train:
        model.loss(model(batch), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for m in trunk for p in m.parameters())
    for module, state in zip(trunk, before, strict=True):
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert not torch.equal(model.backbone.blocks[2][0].bn1.running_mean, top_before)
    assert inputs.validation_logits().shape[1] == 4
