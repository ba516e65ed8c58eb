"""Validation metric: 3D Dice per structure as separate scalars, for logs, TensorBoard and model selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.handlers import from_engine
from monai.metrics import DiceMetric
from monai.utils import optional_import

Metric, _ = optional_import("ignite.metrics", name="Metric")
reinit__is_reduced, _ = optional_import("ignite.metrics.metric", name="reinit__is_reduced")

__all__ = ["StructureDice"]


class StructureDice(Metric):
    """Dice of every foreground structure, averaged over the validation volumes.

    Each structure is a ``{prefix}{name}`` scalar in ``engine.state.metrics``; volumes where it is absent
    from both the reference and the prediction are left out of its mean (MONAI ``ignore_empty``).

    Args:
        class_names: names of all classes, background first.
        output_transform: maps the engine output to ``(pred, label)``, each a list of one-hot
            ``[C, *spatial]`` tensors. Defaults to ``from_engine(["pred", "label"])``.
        prefix: prefix of the metric names.
        device: device of the metric's state.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_transform: Callable = from_engine(["pred", "label"]),
        prefix: str = "val_dice_",
        device: str | torch.device = "cpu",
    ) -> None:
        self.class_names = list(class_names)
        self.prefix = prefix
        self._dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._dice.reset()

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        self._dice(y_pred=output[0], y=output[1])

    def compute(self) -> dict[str, float]:
        scores = self._dice.aggregate()  # [volumes, C - 1], NaN where a structure is absent from both
        means = torch.nanmean(scores.float(), dim=0)
        return {f"{self.prefix}{name}": float(v) for name, v in zip(self.class_names[1:], means)}
