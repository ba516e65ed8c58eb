"""A progress line with ETA and TensorBoard scalars, reading loss values from the device only every N iterations."""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch
from monai.utils import optional_import

from plc_monai._ignite import Engine, Events
from plc_monai.runtime import is_main_process

SummaryWriter, _ = optional_import("torch.utils.tensorboard", name="SummaryWriter")

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """Log ``phase | iteration/total | losses | it/s | ETA`` every ``log_interval`` iterations.

    Loss tensors are read from the device (a synchronisation) only then. The losses, the trainer's scalar
    ``state.metrics`` and the ``evaluator``'s metrics also go to TensorBoard against the training iteration.

    Args:
        log_interval: iterations between progress lines.
        tensorboard_dir: TensorBoard log folder; ``None`` disables TensorBoard.
        evaluator: the validation engine whose metrics to record.
    """

    def __init__(self, log_interval: int = 50, tensorboard_dir: str | os.PathLike | None = None, evaluator: Any = None) -> None:
        if log_interval < 1:
            raise ValueError(f"log_interval must be >= 1, got {log_interval}.")
        self.log_interval = int(log_interval)
        self.tensorboard_dir = tensorboard_dir
        self.evaluator = evaluator
        self.writer = None
        self._t0: float | None = None
        self._it0 = 0
        self.trainer: Any = None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_interval), self)
        engine.add_event_handler(Events.COMPLETED, self._close)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._log_validation)

    def _start(self, engine: Engine) -> None:
        self._t0, self._it0 = time.perf_counter(), engine.state.iteration
        if self.tensorboard_dir is not None and is_main_process() and self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir))

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        it = engine.state.iteration
        total = engine.state.max_epochs * engine.state.epoch_length
        losses = {k: float(v) for k, v in (engine.state.output or {}).items() if torch.is_tensor(v) and v.numel() == 1}
        elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
        rate = (it - self._it0) / elapsed if elapsed > 0 else float("nan")
        eta = datetime.timedelta(seconds=int((total - it) / rate)) if rate == rate and rate > 0 else "?"
        phase = engine.phase() if hasattr(engine, "phase") else "train"
        text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        engine.logger.info(f"{phase} | iteration {it}/{total} | {text} | {rate:.2f} it/s | ETA {eta}")
        if self.writer is not None:
            self._write("train", {**losses, **engine.state.metrics}, it)

    def _log_validation(self, evaluator: Engine) -> None:
        if self.writer is not None and self.trainer is not None:
            self._write("val", evaluator.state.metrics, self.trainer.state.iteration)

    def _write(self, prefix: str, values: dict[str, Any], iteration: int) -> None:
        """Write the scalars among ``values`` to TensorBoard as ``<prefix>/<name>``."""
        for k, v in values.items():
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
                self.writer.add_scalar(f"{prefix}/{k}", float(v), iteration)
        self.writer.flush()

    def _close(self, engine: Engine) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
