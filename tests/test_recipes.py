"""Named recipes: a recipe's values under the options given, the device's recipe when none is,
the ABID baseline exactly (SGD, step schedule, horizontal flips only)."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from torch import nn

from bincount.model.config import TrainConfig
from bincount.model.inputs import augment_batch
from bincount.model.networks import CountingModel
from bincount.model.optim import Schedule, TrainState, build_optimizer
from bincount.model.recipes import DEMO_RECIPE, RECIPES
from flows.cli import parse


def test_the_abid_baseline_recipe_is_the_challenge_baseline():
    config = TrainConfig(recipe="abid-baseline")
    assert (config.arch, config.pretrained, config.image_size) == ("resnet34", False, 224)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        1e-4,
    )
    assert (config.batch_size, config.epochs, config.schedule) == (128, 40, "step")
    assert (config.step_epochs, config.step_gamma, config.augment) == (10, 0.1, "hflip")


def test_given_options_override_the_recipe_and_no_recipe_means_the_devices():
    config = TrainConfig(recipe="abid-baseline", epochs=3, lr=0.05)
    assert (config.epochs, config.lr, config.arch) == (3, 0.05, "resnet34")

    on_cpu = TrainConfig(seed=3).for_device("cpu")
    assert on_cpu.recipe == "cpu" and on_cpu.seed == 3
    assert on_cpu.max_minutes == RECIPES["cpu"]["max_minutes"]
    on_gpu = TrainConfig(image_size=224).for_device("cuda:0")
    assert (on_gpu.recipe, on_gpu.image_size) == ("gpu", 224)
    assert on_gpu.pretrained and on_gpu.arch == RECIPES["gpu"]["arch"]
    # Another network on the GPU recipe starts from ImageNet only where weights are bundled.
    assert not TrainConfig(arch="resnet34").for_device("cuda").pretrained
    assert TrainConfig(arch="tf_efficientnet_lite0").for_device("cuda").pretrained
    assert TrainConfig(recipe="abid-baseline").for_device("cuda").recipe == "abid-baseline"

    # What is saved reads back the same; configs saved before augment was a choice still load.
    assert TrainConfig.model_validate(on_gpu.model_dump()) == on_gpu
    old = {**TrainConfig().model_dump(exclude={"recipe", "augment"}), "augment": False}
    assert TrainConfig.model_validate(old).augment == "none"


def test_the_cli_passes_the_recipe_and_only_the_options_given():
    argv = ["train", "--recipe", "abid-baseline", "--epochs", "3", "--no-test-time-flips"]
    config = parse(argv).arguments["config"]
    assert config == TrainConfig(recipe="abid-baseline", epochs=3, test_time_flips=False)
    assert config.lr == 0.1

    config = parse(["retrain", "--lr", "0.01"]).arguments["config"]
    assert config.recipe is None and config.model_fields_set == {"lr"}
    assert config.for_device("cpu").lr == 0.01


def _lrs(config: TrainConfig, steps_per_epoch: int = 4) -> list[float]:
    schedule = Schedule(config, steps_per_epoch=steps_per_epoch)
    return [schedule.lr(TrainState(step=epoch * steps_per_epoch)) for epoch in range(config.epochs)]


def test_the_step_schedule_divides_the_lr_every_step_epochs():
    lrs = _lrs(TrainConfig(recipe="abid-baseline"))
    assert lrs[0] == lrs[9] == pytest.approx(0.1)
    assert lrs[10] == lrs[19] == pytest.approx(0.01)
    assert lrs[30] == lrs[39] == pytest.approx(1e-4)
    # With a time budget the steps fall at the same fractions of it.
    timed = TrainConfig(recipe="abid-baseline", max_minutes=1.0)
    schedule = Schedule(timed, steps_per_epoch=1000)
    assert schedule.lr(TrainState(step=1, train_seconds=16.0)) == pytest.approx(0.01)
    cosine = _lrs(TrainConfig(recipe="cpu", warmup_epochs=0))
    assert cosine[0] == pytest.approx(RECIPES["cpu"]["lr"]) and cosine == sorted(
        cosine, reverse=True
    )


def test_the_demo_trains_for_epochs_alone_so_a_busy_machine_learns_the_same():
    import inspect

    from flows.demo import demo

    config = TrainConfig(**DEMO_RECIPE)
    assert config.max_minutes is None and config.epochs == DEMO_RECIPE["epochs"]
    schedule = Schedule(config, steps_per_epoch=10)
    # However long the steps took, the lr is where the steps put it, and training goes on.
    assert schedule.lr(TrainState(step=50)) == schedule.lr(TrainState(step=50, train_seconds=1e6))
    assert not schedule.out_of_time(1e6)
    defaults = inspect.signature(demo.fn).parameters
    assert defaults["train_epochs"].default == DEMO_RECIPE["epochs"]
    assert defaults["train_minutes"].default is None


def test_the_optimiser_follows_the_config():
    model = CountingModel("mobilenet_v3_small", head="ce", max_count=5)
    sgd = build_optimizer(model, TrainConfig(recipe="abid-baseline"))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and sgd.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(build_optimizer(model, TrainConfig(recipe="cpu")), torch.optim.AdamW)


def test_hflip_augmentation_only_mirrors_left_to_right():
    images = torch.rand(32, 3, 8, 8)
    out = augment_batch(images.clone(), torch.Generator().manual_seed(0), flips_only=True)
    mirrored = [torch.equal(o, i.flip(2)) for o, i in zip(out, images, strict=True)]
    unchanged = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True))
    assert 0 < sum(mirrored) < len(images)


def _one_step(model: CountingModel, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    images = torch.rand(8, 3, 32, 32)
    loss = model.loss(model(images), torch.arange(8) % 6)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "tf_efficientnet_lite0"])
def test_a_frozen_backbone_trains_the_head_alone(arch):
    torch.manual_seed(0)
    model = CountingModel(arch, head="ordinal", max_count=5)
    before = copy.deepcopy(model.state_dict())
    # Features from somewhere: a weights file (what it holds does not matter to the optimiser).
    config = TrainConfig(arch=arch, loss="ordinal", backbone_lr_scale=0, weights="features.pt")
    optimizer = build_optimizer(model, config)
    _one_step(model, optimizer)
    after = model.state_dict()
    head = {name for name, p in model.named_parameters() if p.requires_grad}
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # The last layer and the thresholds learn; no backbone weight nor batch-norm statistic moves.
    assert head == {"thresholds", *(f"backbone.{n}" for n in _classifier_names(model))}
    assert changed == head
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def _classifier_names(model: CountingModel) -> set[str]:
    classifier = model.classifier()
    return {
        f"{module_name}.{name}"
        for module_name, module in model.backbone.named_modules()
        if module is classifier
        for name, _ in module.named_parameters()
    }


def test_a_scaled_backbone_learns_at_its_share_of_the_lr():
    model = CountingModel("mobilenet_v3_small", head="ce", max_count=5)
    config = TrainConfig(lr=0.01, backbone_lr_scale=0.1)
    head, backbone = build_optimizer(model, config).param_groups
    assert (head["lr"], backbone["lr"]) == (0.01, pytest.approx(0.001))
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    schedule = Schedule(config, steps_per_epoch=10)
    assert schedule.lr(TrainState(step=5)) * backbone["lr_scale"] < schedule.lr(TrainState(step=5))
    # At the default the optimiser keeps its single group, so earlier checkpoints resume.
    assert len(build_optimizer(model, TrainConfig()).param_groups) == 1


def test_the_backbone_lr_scale_changes_the_version_only_away_from_its_default():
    given = TrainConfig(backbone_lr_scale=1.0)
    before_the_field = hashlib.sha256(
        json.dumps(
            {
                "config": given.model_dump(
                    exclude={
                        "compile",
                        "backbone_lr_scale",
                        "frozen_blocks",
                        "cache_trunk",
                        "label_smoothing",
                        "ensemble",
                        "count_estimate",
                        "synthetic_bins",
                        "synthetic_epochs",
                        "synthetic_mix",
                    }
                ),
                "manifest": "m",
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:12]
    assert given.fingerprint("m") == TrainConfig().fingerprint("m") == before_the_field
    assert TrainConfig(backbone_lr_scale=0.5).fingerprint("m") != before_the_field


def test_a_frozen_backbone_needs_features_worth_keeping():
    with pytest.raises(ValueError, match="Expected pretrained or weights with a frozen backbone"):
        TrainConfig(arch="resnet18", backbone_lr_scale=0)
    probe = TrainConfig(recipe="probe")
    assert (probe.pretrained, probe.backbone_lr_scale, probe.loss) == (True, 0.0, "ordinal")
