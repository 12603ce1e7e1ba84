"""Training hyperparameters: one frozen, validated config saved with every checkpoint and model."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from bincount.data.manifestdetails import ManifestDetails

RecipeName = Literal["abid-baseline", "cpu", "gpu", "probe", "real"]

# torch.compile's modes. "reduce-overhead" and "max-autotune" replay CUDA graphs, which need
# the same shapes every step: training's batches all have them (the train loader drops the
# last, partial batch; every image is cached at one size), and validation runs the model
# uncompiled. True is "default" (the field was a bool first).
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = CompileMode.__args__
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}

# Named presets (``--recipe``): a config is its recipe's values, then the fields given
# explicitly. With no recipe, training picks "cpu" or "gpu" for the device it runs on
# (:meth:`TrainConfig.for_device`) and saves the choice in the model's config.
RECIPES: dict[str, dict] = {
    # The ABID challenge baseline, exactly: ResNet-34 from scratch at 224 px, SGD lr 0.1,
    # momentum 0.9, weight decay 1e-4, batch 128, 40 epochs, lr x 0.1 every 10, horizontal
    # flips only (no early stop, no test-time flips).
    "abid-baseline": {
        "arch": "resnet34",
        "pretrained": False,
        "loss": "ce",
        "image_size": 224,
        "epochs": 40,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",
        "step_epochs": 10,
        "step_gamma": 0.1,
        "warmup_epochs": 0,
        "patience": 40,
        "augment": "hflip",
        "test_time_flips": False,
    },
    # What 2 CPU cores train in minutes: 20,000 synthetic bins in a 20-minute `bincount train`
    # (image cache and calibration included; README "The CPU recipe"). ImageNet
    # EfficientNet-Lite0 (bundled weights) at 112 px: 5x slower per image than
    # mobilenet_v3_small from scratch here (60 against 290 images/s), but on 5,000 bins two
    # epochs of it reached 65 % validation accuracy where five of mobilenet reached 43 %.
    # Softmax rather than CORAL: its probabilities came out calibrated (ECE 0.07 against 0.19)
    # and found wrong records better (bench/review.py: average precision 0.57-0.72 against
    # 0.48-0.49).
    "cpu": {
        "arch": "tf_efficientnet_lite0",
        "pretrained": True,
        "loss": "ce",
        "image_size": 112,
        "epochs": 30,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.01,
        "schedule": "cosine",
        "warmup_epochs": 0.2,
        "patience": 8,
        "max_minutes": 14.0,
        "augment": "count_preserving",
        "test_time_flips": True,
    },
    # ImageNet EfficientNet-Lite2 (bundled weights) fine-tuned at its native 260 px, softmax
    # head (calibrated probabilities for the review queue), AdamW with a one-epoch warmup and
    # cosine decay over 30 epochs. On an H100: 2,600 images/s, 99.8 % test accuracy on 20,000
    # synthetic bins after 22 epochs (bench/README.md "Recipes end to end on the GPU").
    "gpu": {
        "arch": "tf_efficientnet_lite2",
        "pretrained": True,
        "loss": "ce",
        "image_size": 260,
        "epochs": 30,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "patience": 6,
        "augment": "count_preserving",
        "test_time_flips": True,
    },
    # What a few hundred real labelled bins can teach: the ImageNet EfficientNet-Lite0 features
    # frozen (a linear probe) under an ordinal head, at 224 px. On the 1,015 real 0-5 bins of
    # ../shared/abid (660 to train) it beat the majority class on 3 of 3 re-splits where full
    # fine-tuning at any lr tried stayed at or below it, and softmax probes on the same
    # features lost to it too (bench/README.md "finetune_real.py").
    "probe": {
        "arch": "tf_efficientnet_lite0",
        "pretrained": True,
        "backbone_lr_scale": 0.0,
        "loss": "ordinal",
        "image_size": 224,
        "epochs": 30,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "patience": 30,
        "augment": "count_preserving",
        "test_time_flips": True,
    },
    # Every real label of ../shared/abid (two sources, 6,704 bins of 0-5 items) on 2 CPU
    # cores: two models averaged (``ensemble``, seeds 0 and 1), each the ImageNet
    # EfficientNet-Lite0 fine-tuned at 160 px, all but its stem and first two blocks (frozen,
    # run on every batch without gradients: the backward pass, the costly part at full
    # resolution, stops above them). The trunk runs on the augmented photos (cache_trunk
    # false: brightness and contrast too, not only flips and shifts of its cached outputs).
    # Softmax with label smoothing: some records are wrong. 5 epochs: every longer run had
    # its lowest validation loss at the third, then over-fitted. 15 minutes' budget per model.
    # Measured 2026-12-07 on 2 quiet CPU cores, all 5,310 train bins: 40.7 % accuracy, RMSE
    # 1.078 on the 725 held-out test bins (44.1 %, 1.026 on validation), where its two models
    # alone reach 37.1 % / 1.127 and 39.7 % / 1.107 (majority class 26.6 %, 1.340); 22.2 min
    # wall, 3.69 GB peak RSS (bench/README.md "Real bins": the variants, the learning curve;
    # 160 px beat 128 px, 224 px bought nothing at twice the time). Short of 45 %.
    "real": {
        "arch": "tf_efficientnet_lite0",
        "pretrained": True,
        "frozen_blocks": 2,
        "cache_trunk": False,
        "loss": "ce",
        "label_smoothing": 0.1,
        "image_size": 160,
        "epochs": 5,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 0.3,
        "patience": 5,
        "max_minutes": 15.0,
        "augment": "count_preserving",
        "test_time_flips": True,
        "ensemble": 2,
    },
}

# The demo (flows/demo.py, bench/review.py): the CPU recipe's schedule on the small network from
# scratch, 5x faster per image, so every bin scores quickly. Bounded by epochs, not minutes, so
# it learns the same on a busy machine as on a quiet one: 19 epochs is what its earlier 6.5-minute
# budget came to on 2 quiet cores (docs/operators/drift.md), about 6.5 minutes for 6,000 bins.
DEMO_RECIPE = {
    "recipe": "cpu",
    "arch": "mobilenet_v3_small",
    "pretrained": False,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "warmup_epochs": 0.5,
    "epochs": 19,
    "max_minutes": None,
}


class TrainConfig(BaseModel):
    """Everything that decides what a training run learns (and so the model's version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: RecipeName | None = Field(
        None,
        description="named preset the other options override (default: cpu or gpu, for the "
        "device it trains on)",
    )
    # The field defaults are the demo's small network; `train` with no recipe takes the CPU or
    # GPU recipe's values for every field not given (for_device).
    arch: str = Field(
        "mobilenet_v3_small", description="torchvision or timm classification model name"
    )
    pretrained: bool = Field(
        False,
        description="start from the ImageNet weights bundled for tf_efficientnet_lite0/1/2",
    )
    loss: Literal["ce", "ordinal"] = Field("ce", description="softmax over counts, or CORAL")
    max_count: int | None = Field(
        None, ge=1, le=250, description="largest count the head predicts (K); None: the manifest's"
    )
    open_top: bool | None = Field(
        None, description='one more class, "more than K" (None: as the manifest\'s policy says)'
    )
    image_size: int = Field(112, ge=32, le=1024)
    epochs: int = Field(30, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="AdamW, or SGD with momentum")
    lr: float = Field(3e-3, gt=0, le=10)
    backbone_lr_scale: float = Field(
        1.0,
        ge=0,
        le=1,
        description="the backbone's lr as a share of the head's (0: frozen, a linear probe)",
    )
    frozen_blocks: int = Field(
        0,
        ge=0,
        le=16,
        description="keep the stem and the first N blocks of an EfficientNet-Lite at their "
        "ImageNet weights (no gradient, batch norm as loaded); epochs train the rest",
    )
    cache_trunk: bool = Field(
        True,
        description="with frozen_blocks: compute the frozen trunk's output once per image and "
        "augment it (flips, shifts); false: run the trunk on every augmented batch (brightness "
        "and contrast too), without gradients",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="share of each target spread over the other counts"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD's momentum")
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step"] = Field(
        "cosine", description="cosine decay, or lr x step-gamma every step-epochs"
    )
    step_epochs: float = Field(10, gt=0, description="the step schedule's period")
    step_gamma: float = Field(0.1, gt=0, le=1, description="the step schedule's factor")
    warmup_epochs: float = Field(0.5, ge=0)
    patience: int = Field(8, ge=1, description="epochs without a better val score before stopping")
    max_minutes: float | None = Field(
        None, gt=0, description="stop after this much training time (the schedule follows it)"
    )
    augment: Literal["count_preserving", "hflip", "none"] = Field(
        "count_preserving",
        description="flips, brightness and contrast; horizontal flips only; or none",
    )
    test_time_flips: bool = Field(
        True, description="predict from the image and its mirrors averaged (3 forward passes)"
    )
    seed: int = 0
    ensemble: int = Field(
        1,
        ge=1,
        le=8,
        description="train this many models (seeds seed, seed+1, ...), each its own run and "
        "registered version, and serve their logits averaged; max_minutes is each one's budget",
    )
    weights: str | None = Field(None, description="a user-supplied weights file to start from")
    compile: bool | CompileMode = Field(
        False,
        description=(
            "torch.compile the model: false, true (= default), or a mode: default, "
            "reduce-overhead (CUDA graphs), max-autotune-no-cudagraphs, max-autotune "
            "(slow to start; pays off on long GPU runs)"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _recipe_then_given(cls, data):
        """A recipe's values under the fields given (which win)."""
        if isinstance(data, dict) and data.get("recipe") in RECIPES:
            recipe = dict(RECIPES[data["recipe"]])
            if "arch" in data and "pretrained" not in data and recipe.get("pretrained"):
                # Another network than the recipe's starts from ImageNet only where weights
                # are bundled for it.
                from bincount.model.pretrained import has_bundled_weights

                recipe["pretrained"] = has_bundled_weights(str(data["arch"]).removeprefix("timm/"))
            return {**recipe, **data}
        return data

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_from_bool(cls, augment):
        # Configs saved before augment was a choice hold a bool.
        if isinstance(augment, bool):
            return "count_preserving" if augment else "none"
        return augment

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_mode(cls, compile):
        # What the bool field took before ("true", "off", 1 from a command line or JSON) still
        # means the same.
        if isinstance(compile, bool) or compile in COMPILE_MODES:
            return compile
        if str(compile).lower() in _TRUE | _FALSE:
            return str(compile).lower() in _TRUE
        raise ValueError(
            f"Expected compile to be false, true or one of {', '.join(COMPILE_MODES)}, "
            f"but got {compile!r}"
        )

    @property
    def compile_mode(self) -> str | None:
        """The torch.compile mode training uses, or None when it does not compile."""
        if self.compile is False:
            return None
        return "default" if self.compile is True else self.compile

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from bincount.model.architectures import resolve_architecture

        resolve_architecture(arch)  # raises "Expected a torchvision or timm ... name"
        return arch

    @model_validator(mode="after")
    def _pretrained_weights_exist(self) -> TrainConfig:
        from bincount.model.pretrained import BUNDLED_WEIGHTS

        if self.pretrained and self.arch.removeprefix("timm/") not in BUNDLED_WEIGHTS:
            raise ValueError(
                f"Expected an architecture with bundled ImageNet weights for pretrained "
                f"({', '.join(sorted(BUNDLED_WEIGHTS))}), but got {self.arch!r}"
            )
        return self

    @model_validator(mode="after")
    def _frozen_backbone_has_features(self) -> TrainConfig:
        if self.frozen_blocks and not (self.pretrained or self.weights):
            raise ValueError(
                f"Expected pretrained or weights with frozen_blocks {self.frozen_blocks}, but got "
                "random weights: the frozen blocks' features would never learn"
            )
        if self.frozen_blocks and self.backbone_lr_scale == 0:
            raise ValueError(
                "Expected frozen_blocks or a frozen backbone (backbone_lr_scale 0), not both"
            )
        if self.backbone_lr_scale == 0 and not (self.pretrained or self.weights):
            raise ValueError(
                "Expected pretrained or weights with a frozen backbone (backbone_lr_scale 0), "
                "but got random weights: its features would never learn"
            )
        return self

    def for_device(self, device: str | None = None) -> TrainConfig:
        """With no recipe, this config on the recipe for where it trains ("gpu" on CUDA, else
        "cpu"), the fields given explicitly kept; with one, this config."""
        if self.recipe is not None:
            return self
        return self.with_recipe(default_recipe(device))

    def with_recipe(self, name: str) -> TrainConfig:
        """This config on recipe ``name``: the fields given explicitly kept, the rest the
        recipe's."""
        given = self.model_dump(include=self.model_fields_set - {"recipe"})
        return TrainConfig.model_validate({**given, "recipe": name})

    def for_manifest(self, details: ManifestDetails) -> TrainConfig:
        """This config with ``max_count`` and ``open_top`` taken from the manifest when unset."""
        update = {}
        if self.open_top is None:
            update["open_top"] = details.open_top
        if self.max_count is not None:
            return self.model_copy(update=update)
        largest = details.max_count
        if largest is None:  # policy "hard": the largest label present
            largest = max(
                (int(label) for split in details.distribution.values() for label in split),
                default=1,
            )
        return self.model_copy(update={**update, "max_count": max(1, int(largest))})

    def fingerprint(self, manifest_version: str) -> str:
        """The model version: a hash of the config and the data it learns from."""
        # How the model is run, not what it learns: compiling leaves the version as it was.
        # Fields added later count only away from their default, so the versions of the
        # models registered before them stay as they were.
        exclude = {"compile"} | {
            name for name, default in _FIELDS_ADDED_LATER.items() if getattr(self, name) == default
        }
        payload = json.dumps(
            {"config": self.model_dump(exclude=exclude), "manifest": manifest_version},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


_FIELDS_ADDED_LATER = {
    "backbone_lr_scale": 1.0,
    "frozen_blocks": 0,
    "cache_trunk": True,
    "label_smoothing": 0.0,
    "ensemble": 1,
}


def default_recipe(device: str | None = None) -> str:
    """The recipe training picks with none given: "gpu" for CUDA (``device`` or, unset, when
    present), else "cpu"."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "gpu" if device.startswith("cuda") else "cpu"
