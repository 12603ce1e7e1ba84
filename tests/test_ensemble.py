"""An ensemble (``ensemble`` N): N models trained apart, each a registered version of its own,
served as one model whose head logits are their average, calibrated on the validation split;
on a few dozen real JPEG bins with the tests' tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bincount.images.shards import load_cached_splits
from bincount.model.config import TrainConfig
from bincount.model.ensemble import member_configs
from bincount.model.evaluation import evaluate_model
from bincount.model.networks import CountingModel, build_model
from bincount.model.registry import load_model, read_model_record
from bincount.model.training import train_model
from bincount.testing.pipeline import tiny_config


@pytest.mark.parametrize("loss", ["ce", "ordinal"])
def test_an_ensemble_serves_the_average_of_its_members_logits(loss):
    torch.manual_seed(0)
    ensemble = CountingModel("mobilenet_v3_small", head=loss, max_count=5, members=3).eval()
    for member in ensemble.members:  # at initialisation a tiny photo's logits are all zero
        torch.nn.init.normal_(member.classifier().bias)
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        each = torch.stack([member(images) for member in ensemble.members])
        assert not torch.allclose(each[0], each[1])  # three networks, initialised apart
        torch.testing.assert_close(ensemble(images), each.mean(dim=0))
    assert ensemble.num_classes == 6 and ensemble.input_mean == ensemble.members[0].input_mean
    with pytest.raises(ValueError, match="trained member by member"):
        ensemble.head_parameters()
    # What the registry saves, build_model builds again from the config.
    config = tiny_config(loss=loss, ensemble=3, max_count=5, open_top=False)
    again = build_model(config)
    again.load_state_dict(ensemble.state_dict())
    assert set(ensemble.state_dict()) == set(again.state_dict())


def test_members_are_the_config_alone_at_consecutive_seeds():
    config = TrainConfig(recipe="real", ensemble=3, seed=4)
    members = member_configs(config)
    assert [m.seed for m in members] == [4, 5, 6] and {m.ensemble for m in members} == {1}
    alone = TrainConfig(recipe="real", ensemble=1, seed=4)
    assert members[0] == alone and members[0].fingerprint("m") == alone.fingerprint("m")
    assert config.fingerprint("m") not in {m.fingerprint("m") for m in members}
    # Models registered before the field existed keep their versions: 1 is not hashed.
    assert "ensemble" not in TrainConfig(recipe="real").model_dump(exclude={"ensemble"})
    with pytest.raises(ValueError):
        TrainConfig(ensemble=0)


def test_an_ensemble_trains_its_members_as_models_of_their_own(cached_manifest):
    output, manifest = cached_manifest
    config = tiny_config(epochs=2, lr=1e-3, ensemble=2)
    result = train_model(output, config, manifest_version=manifest)
    record = read_model_record(output, result.version)
    members = record.lineage.model_dump()["members"]
    assert len(members) == 2 and result.version not in members
    # Each member is the plain config's model at its seed: found, not trained again.
    for seed, version in enumerate(members):
        alone = train_model(
            output, tiny_config(epochs=2, lr=1e-3, seed=seed), manifest_version=manifest
        )
        assert (alone.version, alone.created) == (version, False)
    assert [row["member"] for row in result.history] == [0, 0, 1, 1]
    assert record.metrics.calibration is not None

    # Served: the average of the registered members' logits, with its own temperature.
    ensemble, _ = load_model(output, result.version)
    first, _ = load_model(output, members[0])
    second, _ = load_model(output, members[1])
    split = load_cached_splits(output, manifest, config.image_size, ("val",))["val"]
    images = torch.from_numpy(split.read(np.arange(len(split)))).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        torch.testing.assert_close(ensemble(images), (first(images) + second(images)) / 2)
    assert float(ensemble.temperature) == pytest.approx(record.metrics.calibration.temperature)

    report = evaluate_model(output, result.version, split="val")
    assert report.metrics.accuracy == pytest.approx(result.val_accuracy)
    again = train_model(output, config, manifest_version=manifest)
    assert (again.version, again.created) == (result.version, False)
