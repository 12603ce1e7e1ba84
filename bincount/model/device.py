"""Where a model runs: the device, precision and data-loading settings for this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: device, precision, and its place in a process group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA; a no-op context on the CPU."""
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        )


def resolve_runtime(device: str | None = None) -> Runtime:
    """CUDA with bf16 autocast when present, else CPU; joins a torchrun process group if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        resolved = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return Runtime(
        device=resolved,
        rank=rank,
        world_size=world_size,
        autocast_dtype=torch.bfloat16 if resolved.type == "cuda" else None,
    )


class NoGpu(RuntimeError):
    """A run that was promised a GPU found none: it stops before any work, never on a CPU."""


def require_gpu(device: str | None = None) -> None:
    """Raise :class:`NoGpu` unless training would run on CUDA (``device`` or the default)."""
    if device is not None and not device.startswith("cuda"):
        raise NoGpu(f"Expected a CUDA device for a run that requires a GPU, but got {device!r}")
    if not torch.cuda.is_available():
        raise NoGpu(
            "Expected a CUDA GPU (the run requires one: require_gpu=true), but torch sees none "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); refusing "
            "to train the gpu recipe on a CPU. Run it on the GPU pool, or pass "
            "require_gpu=false to accept a CPU"
        )
