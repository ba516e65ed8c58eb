"""The paper's network: a UNet backbone ``c_theta`` with a segmentation head ``g_xi`` and a
pixel-contrastive projection head ``h_phi`` (Chaitanya et al., Section IV-C and Fig. 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

__all__ = ["ContrastiveHeadUNet", "TrainForward"]


def _conv(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, plain: bool = False) -> nn.Module:
    """A ``kernel_size`` convolution + batch norm + ReLU, or only the convolution (``plain``: last layer of a head)."""
    return Convolution(
        spatial_dims, in_channels, out_channels, kernel_size=kernel_size, act="RELU", norm="BATCH", adn_ordering="NA",
        bias=True, conv_only=plain,
    )


def _double_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU layers: one encoder block, or the tail of one decoder block."""
    return nn.Sequential(
        _conv(spatial_dims, in_channels, out_channels, 3), _conv(spatial_dims, out_channels, out_channels, 3)
    )


class _UpBlock(nn.Module):
    """x2 nearest upsampling, a 3x3 conv to the skip's width, concatenation with the skip, two 3x3 convs."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_conv = _conv(spatial_dims, in_channels, skip_channels, 3)
        self.convs = _double_conv(spatial_dims, 2 * skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up_conv(self.upsample(x))
        return self.convs(torch.cat([x, skip], dim=1))


class ContrastiveHeadUNet(nn.Module):
    """UNet with a segmentation head and a pixel-contrastive projection head (layers: docs/method.md).

    The backbone ``c_theta`` is an encoder of ``len(channels)`` double-conv blocks with max-pooling and a
    decoder of ``len(channels) - 1`` up-sampling blocks with skips. The segmentation head ``g_xi`` (three
    3x3 convs) gives ``num_classes`` logits; the contrastive head ``h_phi`` (two 1x1 convs) gives
    ``embedding_dim`` raw (un-normalised) channels per pixel. ``forward`` returns only the logits, so the
    module works unchanged with MONAI inferers, TorchScript and MONAI Deploy; training calls
    :meth:`forward_train`. Unlike the authors' code, the up-sampling convolution is 3x3 (theirs 2x2).

    Args:
        spatial_dims: 2 for slices ``[B, C, H, W]`` (the paper), 3 for volumes ``[B, C, H, W, D]``.
        in_channels: image channels (1 for the paper's MRI).
        num_classes: segmentation classes including background (ACDC 4, Prostate 3, MM-WHS 8).
        channels: encoder widths, one per level; the paper's are ``(16, 32, 64, 128, 128, 128)``.
        embedding_dim: channels ``D`` of the contrastive head's output (16 in the paper).
        head_channels: width of the hidden layers of both heads (16 in the paper).

    Raises:
        ValueError: when ``spatial_dims`` is not 2 or 3, ``channels`` has fewer than 2 levels, or
            any width is not positive.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 128, 128),
        embedding_dim: int = 16,
        head_channels: int = 16,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}.")
        widths = {"in_channels": in_channels, "embedding_dim": embedding_dim, "head_channels": head_channels,
                  **{f"channels[{i}]": c for i, c in enumerate(channels)}}
        for name, value in widths.items():
            if int(value) < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must include background and at least one structure, got {num_classes}.")

        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.divisor = 2 ** (len(channels) - 1)

        inputs = (in_channels, *channels[:-1])
        self.encoder = nn.ModuleList(_double_conv(spatial_dims, c_in, c_out) for c_in, c_out in zip(inputs, channels))
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2)
        self.decoder = nn.ModuleList(
            # the deeper stage (bottleneck or previous decoder block) always has width channels[level + 1]
            _UpBlock(spatial_dims, channels[level + 1], channels[level], channels[level])
            for level in reversed(range(len(channels) - 1))
        )
        self.seg_head = nn.Sequential(
            _conv(spatial_dims, channels[0], head_channels, 3),
            _conv(spatial_dims, head_channels, head_channels, 3),
            _conv(spatial_dims, head_channels, num_classes, 3, plain=True),
        )
        self.contrastive_head = nn.Sequential(
            _conv(spatial_dims, channels[0], head_channels, 1),
            _conv(spatial_dims, head_channels, embedding_dim, 1, plain=True),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                # He-normal initialisation as in the authors' code (fan-in, ReLU gain), zero biases.
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The shared encoder-decoder ``c_theta``: images ``[B, in_channels, H, W[, D]]`` (each spatial size
        divisible by ``2 ** (len(channels) - 1)``) to full-resolution features ``[B, channels[0], H, W[, D]]``."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"expected input of shape [B, C, {'H, W' if self.spatial_dims == 2 else 'H, W, D'}], got {list(x.shape)}."
            )
        for size in x.shape[2:]:
            if size % self.divisor != 0:
                raise ValueError(
                    f"spatial size {list(x.shape[2:])} is not divisible by {self.divisor} "
                    f"(2 ** number of poolings); crop or pad the input to a multiple of {self.divisor}."
                )
        skips: list[torch.Tensor] = []
        last = len(self.encoder) - 1
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < last:
                skips.append(x)
                x = self.pool(x)
        for i, up in enumerate(self.decoder):
            x = up(x, skips[last - 1 - i])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``[B, num_classes, H, W]`` of images ``[B, in_channels, H, W]``."""
        return self.seg_head(self.backbone(x))

    @torch.jit.export
    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, num_classes, H, W], embedding [B, embedding_dim, H, W])`` of images ``[B, in_channels, H, W]``
        from one pass through the backbone."""
        features = self.backbone(x)
        return self.seg_head(features), self.contrastive_head(features)


class TrainForward(nn.Module):
    """``forward`` = ``network.forward_train``: the view to wrap in ``DistributedDataParallel``.

    DDP synchronises gradients only through the wrapped module's ``forward``, so
    ``DistributedDataParallel(TrainForward(net))`` trains ``net``, which inference and export keep using.

    Args:
        network: a module with ``forward_train(x) -> (logits, embedding)``.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.forward_train(x)
