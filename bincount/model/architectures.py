"""Which zoo builds a network name: torchvision's classification models, or timm's.

Below both :mod:`bincount.model.config` (which checks a config's ``arch``) and
:mod:`bincount.model.networks` (which builds it); neither is known here.
"""

from __future__ import annotations

import functools
from typing import Literal

from bincount.images.vision import torchvision

Zoo = Literal["torchvision", "timm"]

TIMM_PREFIX = "timm/"


def timm_module():
    """timm, imported on first use (a second of import time) and always after
    ``bincount.images.vision``, which it needs to import torchvision with the CPU torch wheel."""
    import timm

    return timm


@functools.cache
def _torchvision_names() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def _timm_names() -> frozenset[str]:
    return frozenset(timm_module().list_models())


def available_architectures() -> list[str]:
    """Every classification model name: torchvision's and timm's (resnet18,
    mobilenet_v3_small, tf_efficientnet_lite0, ...)."""
    return sorted(_torchvision_names() | _timm_names())


def resolve_architecture(arch: str) -> tuple[Zoo, str]:
    """Which zoo builds ``arch``, and its name there: torchvision first, so the models
    registered before timm was a zoo keep their network; ``timm/NAME`` is timm's."""
    if arch in _torchvision_names():
        return "torchvision", arch
    name = arch.removeprefix(TIMM_PREFIX)
    if name in _timm_names():
        return "timm", name
    raise ValueError(
        f"Expected a torchvision or timm classification model name (e.g. resnet18, "
        f"mobilenet_v3_small, tf_efficientnet_lite0), but got {arch!r}"
    )
