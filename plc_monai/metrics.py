"""Validation metric: 3D Dice per structure as separate scalars, for logs, TensorBoard and model selection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.metrics import DiceMetric
from monai.utils import optional_import

Metric, _ = optional_import("ignite.metrics", name="Metric")
reinit__is_reduced, _ = optional_import("ignite.metrics.metric", name="reinit__is_reduced")

__all__ = ["StructureDice"]


def _pred_label(output: Any) -> tuple[Any, Any]:
    if isinstance(output, Sequence) and not isinstance(output, (str, bytes)) and isinstance(output[0], dict):
        return [o["pred"] for o in output], [o["label"] for o in output]
    return output["pred"], output["label"]


class StructureDice(Metric):
    """Dice of every foreground structure, averaged over the validation volumes.

    MONAI's ``MeanDice`` gives one number (the key metric used to keep the best model); this metric
    reports each structure separately as ``{prefix}{name}`` scalars in ``engine.state.metrics``.
    Volumes where a structure is absent from both the reference and the prediction are left out of
    that structure's mean (MONAI ``ignore_empty``).

    Args:
        class_names: names of all classes, background first.
        output_transform: maps the engine output to ``(pred, label)``, each a list of one-hot
            ``[C, *spatial]`` tensors (MONAI's decollated ``pred``/``label``).
        prefix: prefix of the metric names.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_transform: Callable = _pred_label,
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
        y_pred, y = output
        self._dice(y_pred=y_pred, y=y)

    def compute(self) -> dict[str, float]:
        scores = self._dice.aggregate()  # [volumes, C - 1], NaN where a structure is absent from both
        means = torch.nanmean(scores.float(), dim=0)
        return {f"{self.prefix}{name}": float(v) for name, v in zip(self.class_names[1:], means)}
