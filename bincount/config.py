"""Training hyperparameters: one frozen, validated config saved with every checkpoint and model."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The demo's CPU recipe: what 2 cores train in a few minutes (flows/demo.py, bench/review.py).
# Softmax rather than CORAL: its probabilities came out calibrated (ECE 0.07 against 0.19) and
# found wrong records better (bench/review.py: average precision 0.57-0.72 against 0.48-0.49).
DEMO_RECIPE = {
    "arch": "mobilenet_v3_small",
    "loss": "ce",
    "image_size": 112,
    "epochs": 30,
    "batch_size": 64,
    "lr": 3e-3,
}


class TrainConfig(BaseModel):
    """Everything that decides what a training run learns (and so the model's version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str = Field("resnet18", description="torchvision classification model name")
    loss: Literal["ce", "ordinal"] = Field("ce", description="softmax over counts, or CORAL")
    max_count: int | None = Field(
        None, ge=1, le=250, description="largest count the head predicts (K); None: the manifest's"
    )
    open_top: bool | None = Field(
        None, description='one more class, "more than K" (None: as the manifest\'s policy says)'
    )
    image_size: int = Field(128, ge=32, le=1024)
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    patience: int = Field(8, ge=1, description="epochs without a better val score before stopping")
    max_minutes: float | None = Field(
        None, gt=0, description="stop after this much training time (the schedule follows it)"
    )
    augment: bool = True
    test_time_flips: bool = Field(
        True, description="predict from the image and its mirrors averaged (3 forward passes)"
    )
    seed: int = 0
    weights: str | None = Field(None, description="a user-supplied weights file to start from")
    compile: bool = Field(
        False, description="torch.compile the model (slow to start; pays off on long GPU runs)"
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        from bincount.models import available_architectures

        if arch not in available_architectures():
            raise ValueError(f"Expected a torchvision classification model name, got {arch!r}")
        return arch

    def for_manifest(self, details: dict) -> TrainConfig:
        """This config with ``max_count`` and ``open_top`` taken from the manifest when unset."""
        update = {}
        if self.open_top is None:
            update["open_top"] = bool(details.get("open_top", False))
        if self.max_count is not None:
            return self.model_copy(update=update)
        largest = details.get("max_count")
        if largest is None:  # policy "hard": the largest label present
            largest = max(
                (int(label) for split in details["distribution"].values() for label in split),
                default=1,
            )
        return self.model_copy(update={**update, "max_count": max(1, int(largest))})

    def fingerprint(self, manifest_version: str) -> str:
        """The model version: a hash of the config and the data it learns from."""
        payload = json.dumps(
            # How the model is run, not what it learns: compiling leaves the version as it was.
            {"config": self.model_dump(exclude={"compile"}), "manifest": manifest_version},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]
