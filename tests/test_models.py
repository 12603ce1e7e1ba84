"""Counting models: both heads give counts and probabilities; weights files load safely."""

from __future__ import annotations

import pytest
import torch

from bincount.models import CountingModel, load_weights_file
from bincount.vision import torchvision


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
    with pytest.raises(ValueError, match="Expected a torchvision classification model name"):
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
