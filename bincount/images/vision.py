"""torchvision, importable with any torch build.

PyPI's torchvision wheel is a CUDA build; beside a CPU-only torch its C extension does not load,
and ``import torchvision`` then fails while registering fake kernels for ``torchvision::nms``
(``operator torchvision::nms does not exist``). When the extension cannot load, the schemas of
the two operators that registration needs are defined first. Models and transforms work; the
extension's own ops (``torchvision.io.decode_jpeg``, detection ops) do not, so bincount decodes
JPEGs with Pillow.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_library: torch.library.Library | None = None  # kept alive: the schemas live as long as it does


def _extension_loaded() -> bool:
    try:
        return hasattr(torch.ops.torchvision, "nms")
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_importable() -> None:
    """Load torchvision's extension if it can load, else define the op schemas it needs."""
    global _library
    if _library is not None or _extension_loaded():
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("Expected torchvision to be installed, but it is not")
    extension = Path(spec.origin).parent / "_C.so"
    try:
        torch.ops.load_library(str(extension))
        return
    except (OSError, RuntimeError):
        pass  # a CUDA build beside a CPU torch: fall through
    _library = torch.library.Library("torchvision", "FRAGMENT")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


ensure_torchvision_importable()

import torchvision  # noqa: E402  (after the schemas above)
from torchvision.transforms import v2  # noqa: E402


def has_image_codecs() -> bool:
    """Whether torchvision's image extension loaded (``decode_jpeg``: libjpeg-turbo on the CPU,
    nvJPEG on a GPU). PyPI's CUDA build beside a CPU-only torch has none."""
    from torchvision.io import image

    return image._has_image_ops()


__all__ = ["has_image_codecs", "torchvision", "v2"]
