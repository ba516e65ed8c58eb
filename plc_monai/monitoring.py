"""Warnings about degenerate training data (absent structures, all-background pseudo-labels) that the losses
survive but that deserve a look."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from plc_monai._ignite import Engine, Events

__all__ = ["DegenerateBatchMonitor"]


class _LabelRecorder:
    """Wraps a segmentation loss and keeps a reference to the labels of its last call (no copy, no sync)."""

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.loss = loss
        self.last_labels: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.last_labels = labels
        return self.loss(logits, labels)


class DegenerateBatchMonitor:
    """Log a warning, once per condition, when training data is degenerate (an Ignite handler).

    Conditions:

    - ``labeled_pool_missing``: a structure is absent from every labeled slice (checked at ``STARTED``).
    - ``batch_missing``: a structure is absent from the labels the segmentation loss saw in the last
      iteration before a check.
    - ``pseudo_background_volumes``: after a pseudo-label refresh, some unlabeled volumes'
      pseudo-labels are background everywhere; ``pseudo_background_all`` when all of them are.
    - ``non_finite_loss``: the last iteration's loss is NaN or Inf.

    Checks run (and synchronise the device) every ``interval`` iterations only; the monitor wraps
    ``engine.seg_loss`` to keep a reference to its labels. ``counts`` holds how many checks met each condition.

    Args:
        num_classes: classes including background.
        interval: iterations between checks.
        class_names: one name per class for the messages; ``"class k"`` by default.

    Raises:
        ValueError: when ``num_classes < 2`` or ``interval < 1``, or ``class_names`` has the wrong length.
    """

    CONDITIONS = ("labeled_pool_missing", "batch_missing", "pseudo_background_volumes", "pseudo_background_all",
                  "non_finite_loss")

    def __init__(self, num_classes: int, interval: int = 50, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}.")
        if interval < 1:
            raise ValueError(f"DegenerateBatchMonitor interval must be >= 1 iteration, got {interval}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")
        self.num_classes = int(num_classes)
        self.interval = int(interval)
        self.class_names = list(class_names) if class_names is not None else [f"class {k}" for k in range(num_classes)]
        self.counts = dict.fromkeys(self.CONDITIONS, 0)
        self.warned: set[str] = set()
        self.recorder: _LabelRecorder | None = None
        self._checked_version = 0

    def attach(self, engine: Engine) -> None:
        """Wrap ``engine.seg_loss`` (when present) and register the checks."""
        loss = getattr(engine, "seg_loss", None)
        if loss is not None:
            self.recorder = loss if isinstance(loss, _LabelRecorder) else _LabelRecorder(loss)
            engine.seg_loss = self.recorder
        engine.add_event_handler(Events.STARTED, self.check_labeled_pool)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def _report(self, engine: Engine, condition: str, message: str) -> None:
        self.counts[condition] += 1
        if condition not in self.warned:
            self.warned.add(condition)
            engine.logger.warning(f"{message} (warned once; training continues)")

    def _absent(self, labels: torch.Tensor) -> list[str]:
        """Names of the foreground classes absent from ``labels`` (one host sync)."""
        present = torch.bincount(labels.reshape(-1).long().clamp(0, self.num_classes - 1), minlength=self.num_classes)
        absent = (present[1:] == 0).nonzero().flatten().cpu().tolist()
        return [self.class_names[k + 1] for k in absent]

    def check_labeled_pool(self, engine: Engine) -> None:
        """Structures absent from every labeled slice of the training set."""
        labels = getattr(getattr(engine, "labeled", None), "labels", None)
        if labels is None or labels.numel() == 0:
            return
        absent = self._absent(labels)
        if absent:
            self._report(
                engine, "labeled_pool_missing",
                f"structure(s) {absent} absent from every labeled slice: the network learns to predict them "
                "nowhere; check the label values or choose another labeled set",
            )

    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        if self.recorder is not None and self.recorder.last_labels is not None:
            absent = self._absent(self.recorder.last_labels)
            if absent:
                self._report(
                    engine, "batch_missing",
                    f"iteration {iteration}: structure(s) {absent} absent from every labeled slice of the batch",
                )
        store = getattr(engine, "pseudo_labels", None)
        if store is not None and len(store) and store.version != self._checked_version:
            self._checked_version = store.version
            self._check_pseudo_labels(engine, store, iteration)
        loss = engine.state.output.get("loss") if isinstance(engine.state.output, dict) else None
        if torch.is_tensor(loss) and not bool(torch.isfinite(loss).all()):
            self._report(engine, "non_finite_loss", f"iteration {iteration}: the loss is {float(loss.float().mean())}")

    def _check_pseudo_labels(self, engine: Engine, store: Any, iteration: int) -> None:
        has_slices = torch.bincount(store.volume_index) > 0
        foreground = store.volume_index[(store.labels > 0).flatten(1).any(1)]  # volume of each slice with foreground
        empty = int((has_slices & (torch.bincount(foreground, minlength=len(has_slices)) == 0)).sum())
        total = int(has_slices.sum())
        if empty == total:
            self._report(
                engine, "pseudo_background_all",
                f"iteration {iteration}: the pseudo-labels of refresh {store.version} are background everywhere; "
                "the contrastive loss gets no foreground anchors from unlabeled slices",
            )
        elif empty:
            self._report(
                engine, "pseudo_background_volumes",
                f"iteration {iteration}: {empty} of {total} unlabeled volume(s) have all-background pseudo-labels "
                f"after refresh {store.version}",
            )
