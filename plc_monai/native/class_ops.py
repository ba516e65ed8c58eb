"""PyTorch-facing wrappers of the CPU class kernels: shape, dtype and layout checks, then one ctypes call.

Each function raises a ValueError for input the kernels cannot take (float32 CPU tensors, C-contiguous,
at most :data:`MAX_CLASSES` classes) and a RuntimeError when the kernels are not available
(:func:`plc_monai.native.load_class_kernels` returns None). They use ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import ctypes

import torch

from plc_monai.native.loader import ClassKernels, load_class_kernels

__all__ = ["MAX_CLASSES", "class_sums", "class_fill", "block_counts"]

#: most classes a table (``class_fill``) or candidate list (``class_sums``, ``block_counts``) may hold
MAX_CLASSES = 8


def _kernels() -> ClassKernels:
    kernels = load_class_kernels()
    if kernels is None:
        from plc_monai.native.loader import class_kernels_status

        raise RuntimeError(f"plc_monai CPU kernels are not available: {class_kernels_status()['reason']}.")
    return kernels


def _check(name: str, tensor: torch.Tensor, ndim: int) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or tensor.dtype != torch.float32:
        raise ValueError(f"{name} must be a float32 CPU tensor, got {getattr(tensor, 'dtype', type(tensor))} "
                         f"on {getattr(tensor, 'device', '?')}.")
    if tensor.ndim != ndim or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {ndim}D tensor, got shape {tuple(tensor.shape)} "
                         f"(contiguous={tensor.is_contiguous()}).")


def _labels(labels: torch.Tensor, batch: int, n_pixels: int) -> None:
    _check("labels", labels, 2)
    if tuple(labels.shape) != (batch, n_pixels):
        raise ValueError(f"labels must be [B, N] = [{batch}, {n_pixels}], got {tuple(labels.shape)}.")


def _class_ids(class_ids: torch.Tensor) -> int:
    _check("class_ids", class_ids, 1)
    if not 1 <= class_ids.shape[0] <= MAX_CLASSES:
        raise ValueError(f"class_ids must hold 1 to {MAX_CLASSES} classes, got {class_ids.shape[0]}.")
    return class_ids.shape[0]


def _ptr(tensor: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(tensor.data_ptr())


def class_sums(features: torch.Tensor, labels: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Per-class sums of the features over all pixels of each class.

    Args:
        features: ``[B, D, N]`` float32, contiguous.
        labels: ``[B, N]`` float32 class ids (integral values).
        class_ids: ``[K]`` float32, the classes to sum, ``K <= MAX_CLASSES``.

    Returns:
        ``[B, D, K]`` float64: ``out[b, :, k] = sum_{n: labels[b, n] = class_ids[k]} features[b, :, n]``
        (float32 products accumulated per 8192 pixels, then in float64). A NaN or Inf anywhere in an
        image's channel reaches every class sum of that channel, as with a GEMM.
    """
    _check("features", features, 3)
    batch, dim, n_pixels = features.shape
    _labels(labels, batch, n_pixels)
    k = _class_ids(class_ids)
    out = torch.empty((batch, dim, k), dtype=torch.float64)
    if out.numel() and n_pixels:
        _kernels().lib.plc_class_sums(_ptr(features), _ptr(labels), batch, dim, n_pixels, _ptr(class_ids), k,
                                      _ptr(out), torch.get_num_threads())
    else:
        out.zero_()
    return out


def class_fill(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-class table to the pixels: ``out[b, d, n] = table[b, d, labels[b, n]]``.

    Args:
        table: ``[B, D, C]`` float32, contiguous, ``C <= MAX_CLASSES``.
        labels: ``[B, N]`` float32 class ids; a pixel whose id lies outside ``[0, C)`` gets 0.

    Returns:
        ``[B, D, N]`` float32.
    """
    _check("table", table, 3)
    batch, dim, n_cls = table.shape
    if not 1 <= n_cls <= MAX_CLASSES:
        raise ValueError(f"table must hold 1 to {MAX_CLASSES} classes, got {n_cls}.")
    if labels.ndim != 2 or labels.shape[0] != batch:
        raise ValueError(f"labels must be [B, N] with B = {batch}, got {tuple(labels.shape)}.")
    n_pixels = labels.shape[1]
    _labels(labels, batch, n_pixels)
    out = torch.empty((batch, dim, n_pixels), dtype=torch.float32)
    if out.numel():
        _kernels().lib.plc_class_fill(_ptr(table), _ptr(labels), batch, dim, n_pixels, n_cls, _ptr(out),
                                      torch.get_num_threads())
    return out


def block_counts(labels: torch.Tensor, class_ids: torch.Tensor, block: int) -> torch.Tensor:
    """Pixels of each class in each block of ``block`` consecutive pixels.

    Args:
        labels: ``[B, N]`` float32 class ids.
        class_ids: ``[K]`` float32, ``K <= MAX_CLASSES``.
        block: pixels per block (the last block may be shorter).

    Returns:
        ``[B, K, ceil(N / block)]`` int64.
    """
    if labels.ndim != 2:
        raise ValueError(f"labels must be [B, N], got {tuple(labels.shape)}.")
    batch, n_pixels = labels.shape
    _labels(labels, batch, n_pixels)
    k = _class_ids(class_ids)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}.")
    out = torch.empty((batch, k, -(-n_pixels // block)), dtype=torch.int64)
    if out.numel():
        _kernels().lib.plc_block_counts(_ptr(labels), batch, n_pixels, _ptr(class_ids), k, block, _ptr(out),
                                        torch.get_num_threads())
    return out
