"""A Dice loss that ``torch.compile(fullgraph=True)`` and CUDA graphs can capture, with the value and gradient of
MONAI's ``DiceLoss(include_background=True, to_onehot_y=True, softmax=True)``, whose reduction axes come from
``.tolist()``, a graph break (``docs/performance.md``)."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["GraphSafeDiceLoss"]


class GraphSafeDiceLoss(_Loss):
    """``mean over [B, C] of 1 - (2 |P * Y| + smooth_nr) / (|P| + |Y| + smooth_dr)``, ``P = softmax(logits)``,
    ``Y = one-hot(labels)``, sums over the spatial axes; background included.

    Args:
        smooth_nr: added to the numerator (MONAI's default 1e-5).
        smooth_dr: added to the denominator (MONAI's default 1e-5).

    Raises:
        ValueError: when a smoothing term is negative.
    """

    def __init__(self, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        if smooth_nr < 0 or smooth_dr < 0:
            raise ValueError(f"smooth_nr and smooth_dr must be >= 0, got {smooth_nr}, {smooth_dr}.")
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits: ``[B, C, *spatial]`` raw network output, ``C >= 2``.
            labels: ``[B, 1, *spatial]`` integer class ids in ``[0, C)`` (not checked: a check would read
                the device).

        Returns:
            The scalar loss.

        Raises:
            ValueError: when the shapes do not match.
        """
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(f"logits must be [B, C, *spatial] with C >= 2, got {tuple(logits.shape)}.")
        if labels.shape != (logits.shape[0], 1, *logits.shape[2:]):
            raise ValueError(f"labels must be [B, 1, *spatial] for logits {tuple(logits.shape)}, got {tuple(labels.shape)}.")
        probs = torch.softmax(logits, dim=1)
        target = torch.zeros_like(probs).scatter_(1, labels.long(), 1.0)
        axes = tuple(range(2, logits.ndim))
        overlap = (probs * target).sum(axes)  # [B, C]
        size = probs.sum(axes) + target.sum(axes)
        return (1.0 - (2.0 * overlap + self.smooth_nr) / (size + self.smooth_dr)).mean()
