"""Validation metric: 3D Dice per structure as separate scalars, for logs, TensorBoard and model selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric

__all__ = ["StructureDice"]


class StructureDice(IgniteMetricHandler):
    """Dice of every foreground structure, averaged over the validation volumes.

    Each structure is a ``{prefix}{name}`` scalar in ``engine.state.metrics``; volumes where it is absent
    from both the reference and the prediction are left out of its mean (MONAI ``ignore_empty``).

    Args:
        class_names: names of all classes, background first.
        output_transform: maps the engine output to ``(pred, label)``, each a list of one-hot
            ``[C, *spatial]`` tensors. Defaults to ``from_engine(["pred", "label"])``.
        prefix: prefix of the metric names.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_transform: Callable = from_engine(["pred", "label"]),
        prefix: str = "val_dice_",
    ) -> None:
        self.class_names = list(class_names)
        self.prefix = prefix
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        super().__init__(metric_fn=dice, output_transform=output_transform, save_details=False)

    def compute(self) -> dict[str, float]:
        scores = self.metric_fn.aggregate()  # [volumes, C - 1], NaN where a structure is absent from both
        means = torch.nanmean(scores.float(), dim=0)
        return {f"{self.prefix}{name}": float(v) for name, v in zip(self.class_names[1:], means)}
