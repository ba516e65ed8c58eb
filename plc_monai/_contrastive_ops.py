"""The speed plumbing of :class:`plc_monai.losses.PixelContrastiveLoss`; nothing here is part of the method.

Shapes: ``B`` images, ``D`` embedding channels, ``N`` pixels (``N_pad`` after padding), ``K`` candidate
classes, ``R`` anchor roles and ``A`` anchors per role.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BLOCK", "class_masks", "draw_pixels", "ClassSumsAndAnchorFeatures", "cosine_logits"]

#: pixels per block in the two-step search of :func:`draw_pixels`
BLOCK = 256

#: up to this many (anchor, class) similarities per role, broadcasting beats a batched GEMM launch (~100x on a CPU)
_BROADCAST_MAX = 4096


def class_masks(class_ids: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``labels [B, N_pad]``: ``class_ids [B, N]`` padded with -1 (no class) to whole blocks of at most
    :data:`BLOCK` pixels, as floats in the dtype of the candidate ids ``classes [K]``; the candidates' one-hot
    ``masks [B, K, N_pad]`` in that dtype; and their long pixel counts per block ``per_block [B, K, nb]``."""
    batch, n_pixels = class_ids.shape
    block = max(1, min(BLOCK, n_pixels))
    n_pad = -(-n_pixels // block) * block
    labels = class_ids.to(classes.dtype)
    if n_pad > n_pixels:
        labels = F.pad(labels, (0, n_pad - n_pixels), value=-1)
    # compared as floats (class ids are small integers, exact in any float dtype), the comparison writes
    # the float mask directly: comparing int64 ids writes a bool mask and converts it, 4-7x slower on CPU
    masks = torch.empty((batch, classes.shape[0], n_pad), dtype=labels.dtype, device=labels.device)
    torch.eq(labels[:, None, :], classes[None, :, None], out=masks)
    # float sums of at most BLOCK ones are exact
    per_block = masks.view(batch, classes.shape[0], n_pad // block, block).sum(dim=-1).long()
    return labels, masks, per_block


def draw_pixels(
    labels: torch.Tensor, classes: torch.Tensor, per_block: torch.Tensor, n_pixels: int, anchor_image: torch.Tensor,
    num_samples: int, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_samples`` pixels per (role, candidate class), uniformly with replacement.

    The rank of a draw in its class is ``floor(u * count)``, ``u ~ U[0, 1)`` (one float64 ``torch.rand``),
    located without scanning the whole image: its block by ``searchsorted`` over cumulative block counts,
    then its position by a running count over that block only.

    Args:
        labels: ``[B, N_pad]`` float class ids from :func:`class_masks`.
        classes: ``[K]`` candidate class ids in the dtype of ``labels``.
        per_block: ``[B, K, nb]`` pixels per class and block (from :func:`class_masks`).
        n_pixels: ``N``, the number of real (unpadded) pixels.
        anchor_image: ``[R]`` batch index of the anchor image of each role.
        num_samples: ``S``, draws per (role, class).
        generator: random generator (its own device), or None for the global RNG.

    Returns:
        ``pixels [R, K, S]`` flat pixel indices and ``present [R, K]``, True where the class has pixels in
        the anchor image (elsewhere ``pixels`` is meaningless).
    """
    n_roles, n_classes = anchor_image.shape[0], per_block.shape[1]
    n_blocks, block = per_block.shape[2], labels.shape[1] // per_block.shape[2]
    image_blocks = per_block[anchor_image]  # [R, K, nb]
    cum_blocks = image_blocks.cumsum(dim=-1)  # inclusive
    count = cum_blocks[..., -1]  # [R, K]
    gen_device = generator.device if generator is not None else labels.device
    u = torch.rand((n_roles, n_classes, num_samples), generator=generator, device=gen_device, dtype=torch.float64)
    u = u.to(labels.device)
    rank = torch.minimum((u * count[..., None]).long(), (count[..., None] - 1).clamp_min(0))  # [R, K, S]
    # the block holding the (rank+1)-th pixel: the first whose cumulative count exceeds rank
    blk = torch.searchsorted(cum_blocks, rank, right=True).clamp_max(n_blocks - 1)
    within = rank - (cum_blocks.gather(-1, blk) - image_blocks.gather(-1, blk))  # rank inside the block
    start = (anchor_image * labels.shape[1])[:, None, None] + blk * block  # [R, K, S]
    window = labels.reshape(-1)[start[..., None] + torch.arange(block, device=labels.device)]  # [R, K, S, L]
    match = window == classes[None, :, None, None]
    # the index of the (within+1)-th match is the number of positions whose running count is still <= within
    offset = (match.cumsum(dim=-1) <= within[..., None]).sum(dim=-1)
    pixels = (blk * block + offset).clamp(0, n_pixels - 1)
    return pixels, count > 0


class ClassSumsAndAnchorFeatures(torch.autograd.Function):
    """``apply(features, masks, anchor_image, pixels)``: per-class feature sums and the anchors' features,
    differentiable w.r.t. ``features``.

    The backward writes both gradients into one ``[B, D, N]`` buffer; plain autograd would allocate two
    and add them, which costs more than the whole loss on a CPU.

    Args:
        features: ``[B, D, N]`` embeddings.
        masks: ``[B, K, N]`` one-hot masks of the candidate classes, in the dtype of ``features``.
        anchor_image: ``[R]`` batch index of each role's anchor image.
        pixels: ``[R, A]`` flat pixel indices of the anchors.

    Returns:
        ``sums [B, D, K]`` and ``anchor_features [R, A, D]``.
    """

    @staticmethod
    def forward(ctx, features, masks, anchor_image, pixels):  # type: ignore[override]
        # [B, K, N] @ [B, N, D] (a transposed view) is faster on CPU than [B, D, N] @ [B, N, K]
        sums = torch.bmm(masks, features.transpose(1, 2)).transpose(1, 2)  # [B, D, K]
        anchor_features = features[anchor_image[:, None], :, pixels]  # [R, A, D]
        ctx.save_for_backward(masks, anchor_image, pixels)
        return sums, anchor_features

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sums, grad_anchor_features):  # type: ignore[override]
        masks, anchor_image, pixels = ctx.saved_tensors
        grad = torch.bmm(grad_sums.contiguous(), masks)  # [B, D, N]
        index = (anchor_image[:, None].expand_as(pixels), pixels)
        grad.transpose(1, 2).index_put_(index, grad_anchor_features, accumulate=True)
        return grad, None, None, None


def cosine_logits(anchors: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Dot products ``[R, A, K]`` of every anchor ``[R, A, D]`` with every class mean ``[R, K, D]`` of its role."""
    if anchors.shape[1] * means.shape[1] <= _BROADCAST_MAX:
        return (anchors[:, :, None, :] * means[:, None, :, :]).sum(-1)
    return torch.bmm(anchors, means.transpose(1, 2))
