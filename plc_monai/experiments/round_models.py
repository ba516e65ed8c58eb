"""Save the model at the end of every pseudo-labeling round (for the paper's Fig. 4, test Dice per round)."""

from __future__ import annotations

import os
from pathlib import Path
import torch

from plc_monai._ignite import Engine, Events
from plc_monai.atomic_files import atomic_torch_save
from plc_monai.runtime import is_main_process, unwrap

__all__ = ["RoundModelSaver", "round_model_path"]

def round_model_path(save_dir: str | os.PathLike, round_index: int) -> Path:
    """Where :class:`RoundModelSaver` writes the model of round ``round_index`` (0: the warm-up model)."""
    return Path(save_dir) / f"model_round_{int(round_index)}.pt"


class RoundModelSaver:
    """An Ignite handler writing ``model_round_<k>.pt`` at the end of each pseudo-labeling round.

    Fires after iterations ``warmup_iterations + k * interval``, ``k = 0 .. num_rounds``. For ``k = 0`` it writes
    the best warm-up weights (``trainer.best_warmup_state`` of :class:`~plc_monai.checkpointing.BestModelPerPhase`,
    which the joint phase starts from), or the current weights before any validation. Plain ``state_dict`` files
    written atomically by rank 0.

    Args:
        network: the trained model (unwrapped from DDP when wrapped).
        save_dir: folder of the round models (the run's ``ckpt_dir``).
        warmup_iterations: iterations of the warm-up (``N1``).
        interval: iterations per round (``P``).
        num_rounds: pseudo-labeling rounds; ``0`` saves only the warm-up model.

    Raises:
        ValueError: when ``interval < 1`` or ``warmup_iterations``/``num_rounds`` are negative.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        save_dir: str | os.PathLike,
        warmup_iterations: int,
        interval: int,
        num_rounds: int,
    ) -> None:
        if interval < 1:
            raise ValueError(f"RoundModelSaver interval must be >= 1 iteration, got {interval}.")
        if warmup_iterations < 0 or num_rounds < 0:
            raise ValueError(f"warmup_iterations and num_rounds must be >= 0, got {warmup_iterations} and "
                             f"{num_rounds}.")
        self.network = network
        self.save_dir = Path(save_dir)
        self.warmup_iterations = int(warmup_iterations)
        self.interval = int(interval)
        self.num_rounds = int(num_rounds)

    @property
    def iterations(self) -> dict[int, int]:
        """``{iteration: round}`` at which a round model is written."""
        return {self.warmup_iterations + k * self.interval: k for k in range(self.num_rounds + 1)}

    def attach(self, engine: Engine) -> None:
        """Register on ``ITERATION_COMPLETED`` at the round boundaries of ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=lambda _, i: i in self.iterations), self)

    def __call__(self, engine: Engine) -> None:
        round_index = self.iterations[int(engine.state.iteration)]
        if not is_main_process():
            return
        weights = getattr(engine, "best_warmup_state", None) if round_index == 0 else None
        if weights is None:
            weights = {k: v.detach().cpu().clone() for k, v in unwrap(self.network).state_dict().items()}
        path = atomic_torch_save(weights, round_model_path(self.save_dir, round_index))
        engine.logger.info(f"round model {round_index} (iteration {engine.state.iteration}) saved to {path}")
