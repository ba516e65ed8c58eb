"""Which process this is under torch.distributed, and which autocast precision a device takes."""

from __future__ import annotations

import torch

__all__ = ["is_main_process", "autocast_dtype"]


def is_main_process() -> bool:
    """True without torch.distributed, or on rank 0 of an initialised process group."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CPUs and on GPUs that support it, fp16 otherwise (which then needs a gradient scaler)."""
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16
