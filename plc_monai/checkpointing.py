"""Checkpoints that survive interruption: atomic writes, automatic resume from one fixed file (MONAI's
``CheckpointSaver`` names files by iteration or metric), and the best model of each phase (the paper's).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plc_monai._ignite import Engine, Events
from plc_monai.atomic_files import atomic_torch_save
from plc_monai.reports import write_json
from plc_monai.runtime import is_main_process, unwrap

__all__ = ["ResumeCheckpoint", "BestModelPerPhase"]


class ResumeCheckpoint:
    """Save everything needed to continue a run to one file, and resume from it when the run restarts.

    Saves ``{name: obj.state_dict()}`` of ``save_dict`` and ``engine.resumable`` (where the trainer and this
    package's handlers register) to ``<save_dir>/<filename>`` every ``save_interval`` iterations, after
    ``extra_iterations`` and at completion; loads it at ``STARTED`` when it exists and ``resume`` is true.
    Only rank 0 writes; every rank loads.

    Args:
        save_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, trainer, ...).
        save_interval: iterations between saves; 0 disables periodic saves.
        extra_iterations: further iterations after which to save.
        resume: load an existing checkpoint at start.
        filename: checkpoint file name.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 500,
        extra_iterations: tuple[int, ...] | list[int] = (),
        resume: bool = True,
        filename: str = "checkpoint.pt",
    ) -> None:
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0 iterations, got {save_interval}.")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.extra_iterations = {int(i) for i in extra_iterations}
        self.resume = resume
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _due(self, engine: Engine, event: int) -> bool:
        return (self.save_interval > 0 and event % self.save_interval == 0) or event in self.extra_iterations

    def _objects(self, engine: Engine | None) -> dict[str, Any]:
        return {**getattr(engine, "resumable", {}), **self.save_dict}

    def save(self, engine: Engine | None = None) -> None:
        if not is_main_process():
            return
        state = {name: unwrap(obj).state_dict() for name, obj in self._objects(engine).items()}
        atomic_torch_save(state, self.path)

    def load(self, engine: Engine | None = None) -> bool:
        """Load the checkpoint if present; returns whether it did."""
        if not (self.resume and self.path.exists()):
            return False
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(
                f"cannot read checkpoint {self.path} ({e}); delete it to start over, or pass --resume False."
            ) from e
        objects = self._objects(engine)
        missing = [name for name in objects if name not in state]
        if missing:
            raise RuntimeError(f"checkpoint {self.path} lacks {missing}; it was written by another configuration.")
        prior_max_epochs = getattr(getattr(engine, "state", None), "max_epochs", None)
        for name, obj in objects.items():
            unwrap(obj).load_state_dict(state[name])
        if prior_max_epochs is not None:  # this run's schedule wins over the checkpoint's
            engine.state.max_epochs = prior_max_epochs
        iteration = getattr(getattr(engine, "state", None), "iteration", "?")
        self.logger.info(f"resumed from {self.path} at iteration {iteration}")
        return True


@dataclass(eq=False)
class BestModelPerPhase:
    """Keep the best validation model of each training phase and of each pseudo-labeling round.

    After each validation of ``evaluator`` it reads ``metric_name`` and the trainer's ``phase()`` and
    ``round_index()``. The best warm-up weights go to the trainer (the joint phase starts from them) and to
    ``<save_dir>/model_warmup.pt``, a round's best to ``trainer.keep_round_best`` when the trainer restores
    it each round, the deployable model to ``<save_dir>/<final_filename>``, and a summary of all of them to
    ``<save_dir>/best_models.json``. Attach it to the trainer (no trainer/evaluator reference cycle).

    Args:
        evaluator: the validation engine (``validate#evaluator``).
        network: the model whose weights are saved.
        save_dir: folder for the model files.
        metric_name: the evaluator metric to maximise.
        final_filename: file name of the deployable model.
        selection: which model ships: ``"final_phase"``, the best of ``trainer.final_phase`` (over all its
            rounds), or ``"all_phases"``, the best over every phase, warm-up included.
    """

    evaluator: Any
    network: torch.nn.Module
    save_dir: str | os.PathLike
    metric_name: str = "val_mean_dice"
    final_filename: str = "model.pt"
    selection: str = "final_phase"

    def __post_init__(self) -> None:
        if self.selection not in ("final_phase", "all_phases"):
            raise ValueError(f"selection must be 'final_phase' or 'all_phases', got {self.selection!r}.")
        self.save_dir = Path(self.save_dir)
        self.trainer: Any = None
        self.best: dict[str, dict[str, float]] = {}
        self.rounds: dict[str, dict[str, float]] = {}
        self.shipped: dict[str, Any] | None = None

    def attach(self, trainer: Engine) -> None:
        """Attach to the trainer: listens to its evaluator's ``EPOCH_COMPLETED`` and registers for checkpoints."""
        self.trainer = trainer
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)
        if hasattr(trainer, "resumable"):
            trainer.resumable["best_model_per_phase"] = self

    def __call__(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric_name)
        if value is None:
            raise KeyError(f"the evaluator computed no metric {self.metric_name!r}; it has {sorted(evaluator.state.metrics)}.")
        value = float(value)
        if value != value:  # NaN
            return
        phase = self.trainer.phase()
        iteration = int(self.trainer.state.iteration)
        record = {"metric": value, "iteration": iteration}
        round_key = str(self.trainer.round_index()) if phase == "joint" and hasattr(self.trainer, "round_index") else None
        round_best = round_key is not None and (round_key not in self.rounds or value > self.rounds[round_key]["metric"])
        phase_best = phase not in self.best or value > self.best[phase]["metric"]
        if not (round_best or phase_best):
            return
        weights = {k: v.detach().clone() for k, v in unwrap(self.network).state_dict().items()}
        if round_best:
            self.rounds[round_key] = dict(record)
            if getattr(self.trainer, "restore_best_each_round", False):
                self.trainer.keep_round_best(weights)
        if phase_best:
            self.best[phase] = dict(record)
            if phase == "warmup":
                self.trainer.best_warmup_state = weights
            if self.selection == "all_phases":
                ships = self.shipped is None or value > self.shipped["metric"]
            else:
                ships = phase == getattr(self.trainer, "final_phase", phase)
            if ships:
                self.shipped = {"phase": phase, **record}
            if is_main_process():
                if phase == "warmup":
                    atomic_torch_save(weights, self.save_dir / "model_warmup.pt")
                if ships:
                    atomic_torch_save(weights, self.save_dir / self.final_filename)
            self.trainer.logger.info(f"best {phase} model: {self.metric_name}={value:.4f} at iteration {iteration}")
        if is_main_process():
            write_json(self.save_dir / "best_models.json", self.summary())

    def summary(self) -> dict[str, Any]:
        """The best validation value and iteration per phase and per joint round, and what ``model.pt`` holds."""
        return {
            "metric": self.metric_name,
            "selection": self.selection,
            "phases": {k: dict(v) for k, v in self.best.items()},
            "rounds": {k: dict(v) for k, v in sorted(self.rounds.items(), key=lambda kv: int(kv[0]))},
            self.final_filename: dict(self.shipped) if self.shipped else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"best": self.best, "rounds": self.rounds, "shipped": self.shipped or {}})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {k: dict(v) for k, v in state["best"].items()}
        self.rounds = {k: dict(v) for k, v in state.get("rounds", {}).items()}
        self.shipped = dict(state["shipped"]) if state.get("shipped") else None
