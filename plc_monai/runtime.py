"""Which process this is under torch.distributed, the module inside a DDP wrapper, and autocast precision."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["is_main_process", "unwrap", "autocast", "autocast_dtype"]


def is_main_process() -> bool:
    """True without torch.distributed, or on rank 0 of an initialised process group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(module: Any) -> Any:
    """The module inside DistributedDataParallel/DataParallel, so saved keys have no ``module.`` prefix."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return module.module if isinstance(module, wrappers) else module


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CPUs and on GPUs that support it, fp16 otherwise (which then needs a gradient scaler)."""
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype | None = None) -> torch.autocast:
    """``torch.autocast`` on ``device`` in ``dtype`` (default :func:`autocast_dtype`; pass it precomputed in a
    compiled region, where ``torch.cuda.is_bf16_supported`` does not trace)."""
    return torch.autocast(device_type=device.type, dtype=dtype or autocast_dtype(device), enabled=enabled)
