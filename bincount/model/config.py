"""Training hyperparameters: one frozen, validated config saved with every checkpoint and model."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bincount.model.recipes import RECIPES, RecipeName

if TYPE_CHECKING:
    from bincount.data.manifestdetails import ManifestDetails

# torch.compile's modes. "reduce-overhead" and "max-autotune" replay CUDA graphs, which need
# the same shapes every step: training's batches all have them (the train loader drops the
# last, partial batch; every image is cached at one size), and validation runs the model
# uncompiled. True is "default" (the field was a bool first).
CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]
COMPILE_MODES: tuple[str, ...] = CompileMode.__args__
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


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
        None,
        gt=0,
        description="stop after this much training time (the schedule follows it); with "
        "synthetic_bins the synthetic epochs take their share of it, by steps",
    )
    augment: Literal["count_preserving", "hflip", "none"] = Field(
        "count_preserving",
        description="flips, brightness and contrast; horizontal flips only; or none",
    )
    synthetic_bins: int = Field(
        0,
        ge=0,
        le=200_000,
        description="first train on this many synthetic bins (bincount.synth, counts "
        "0..max_count), then on the manifest's (0: none)",
    )
    synthetic_epochs: int = Field(2, ge=1, le=100, description="epochs over the synthetic bins")
    synthetic_mix: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="after the synthetic epochs, this share of every real batch is synthetic "
        "bins still (a fresh draw of them each epoch; 0: real bins only)",
    )
    count_estimate: Literal["mode", "median"] | None = Field(
        None,
        description="the count predicted from the probabilities: the most probable (mode) or "
        "the median; unset, the head's own (mode for ce, median for ordinal)",
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

    @model_validator(mode="after")
    def _synthetic_mix_has_bins(self) -> TrainConfig:
        if not self.synthetic_mix:
            return self
        if not self.synthetic_bins:
            raise ValueError(
                f"Expected synthetic_bins with synthetic_mix {self.synthetic_mix}, but got none "
                "(without synthetic bins, set synthetic_mix 0 too)"
            )
        if self.frozen_blocks and self.cache_trunk:
            raise ValueError(
                "Expected cache_trunk false with synthetic_mix: the cached trunk outputs are "
                "the real bins' alone"
            )
        synthetic_share = round(self.batch_size * self.synthetic_mix)
        if not 1 <= synthetic_share < self.batch_size:
            raise ValueError(
                f"Expected synthetic_mix {self.synthetic_mix} of batch_size {self.batch_size} "
                "to leave at least one real and one synthetic bin a batch"
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
    "count_estimate": None,
    "synthetic_bins": 0,
    "synthetic_epochs": 2,
    "synthetic_mix": 0.0,
}


def default_recipe(device: str | None = None) -> str:
    """The recipe training picks with none given: "gpu" for CUDA (``device`` or, unset, when
    present), else "cpu"."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "gpu" if device.startswith("cuda") else "cpu"
