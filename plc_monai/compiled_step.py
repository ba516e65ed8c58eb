"""The optional compiled training step (``compile_step``): forward, both losses, backward and the update.

:meth:`SemiSupervisedTrainer.step_losses <plc_monai.engines.SemiSupervisedTrainer.step_losses>` (the forward
pass, the Dice loss and the contrastive loss of one iteration) and its backward go through ``torch.compile``
(:data:`COMPILE_DEFAULTS`), and so does ``optimizer.step()`` (:class:`CompiledOptimizerStep`); on CUDA,
``mode="reduce-overhead"`` replays them as CUDA graphs. Slice drawing, augmentation, the pseudo-label refresh,
validation and the handlers stay eager. A configuration that cannot be one graph is refused up front
(:func:`check_compilable`). What is captured and what has been measured: docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.losses import DiceLoss

from plc_monai.losses import PixelContrastiveLoss

__all__ = ["CompiledLosses", "CompiledOptimizerStep", "check_compilable", "COMPILE_DEFAULTS"]

#: ``torch.compile`` arguments of the compiled step; ``compile_options`` overrides them
COMPILE_DEFAULTS: dict[str, Any] = {"mode": "reduce-overhead", "fullgraph": True, "dynamic": False}

StepLosses = Callable[[torch.Tensor, torch.Tensor, int, float, float], dict[str, torch.Tensor]]


def check_compilable(trainer: Any) -> None:
    """Refuse the trainer configurations that cannot be captured as one graph.

    Args:
        trainer: a :class:`~plc_monai.engines.SemiSupervisedTrainer` being built with ``compile_step``.

    Raises:
        ValueError: naming every reason: MONAI's ``DiceLoss``, a DDP ``train_forward``, fp16 autocast,
            ``shared_forward=False``, a contrastive loss with ``check_inputs``, ``reduction="none"`` or a generator.
    """
    problems = []
    if trainer.train_forward is not None:
        problems.append("a train_forward module (DistributedDataParallel) is not compiled; train on one device")
    if trainer.grad_scaler is not None:
        problems.append("fp16 autocast needs a gradient scaler, whose inf check reads the device; use bf16 or amp=False")
    if not trainer.shared_forward and trainer.lambda_cont > 0:
        problems.append("shared_forward=False runs two forward passes per iteration; only the shared pass is compiled")
    if isinstance(trainer.seg_loss, DiceLoss):
        problems.append("MONAI's DiceLoss breaks the graph (its reduction axes come from a tensor's .tolist()); "
                        "use plc_monai.dice.GraphSafeDiceLoss, the same loss")
    loss = trainer.contrastive_loss
    if isinstance(loss, PixelContrastiveLoss) and trainer.lambda_cont > 0:
        if loss.check_inputs:
            problems.append("the contrastive loss must have check_inputs=False (its value checks read the device)")
        if loss.reduction == "none":
            problems.append("the contrastive loss must reduce to a scalar ('mean' or 'sum'), not 'none'")
        if loss.generator is not None:
            problems.append("the contrastive loss must draw from torch's global RNG (generator=None)")
    if problems:
        raise ValueError("compile_step cannot capture this configuration: " + "; ".join(problems) + ".")


def _compile_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`COMPILE_DEFAULTS` updated by ``options``; ``mode`` only for inductor, which alone takes it."""
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"compile_options must be a mapping of torch.compile arguments, got {options!r}.")
    merged = {**COMPILE_DEFAULTS, **(options or {})}
    if merged.get("backend", "inductor") != "inductor":
        merged.pop("mode", None)
    return merged


class CompiledLosses:
    """``step_losses`` through ``torch.compile``; a call takes and returns what ``step_losses`` does.

    Args:
        step_losses: ``(x [B, 1, H, W], y [B, 1, H, W], seg_count, seg_weight, lambda_cont) -> dict`` of
            scalar tensors, ``"loss"`` with its graph.
        device: the training device.
        options: ``torch.compile`` keyword arguments over :data:`COMPILE_DEFAULTS` (e.g.
            ``{"backend": "aot_eager"}`` to trace without code generation, as the CPU tests do; ``mode``
            is dropped for a backend other than inductor, which alone takes it).

    Raises:
        ValueError: when ``options`` is not a mapping.
    """

    def __init__(self, step_losses: StepLosses, device: torch.device, options: Mapping[str, Any] | None = None) -> None:
        self.options = _compile_options(options)
        self._compiled = torch.compile(step_losses, **self.options)
        # CUDA graph trees need to be told where an iteration starts (the step is not a plain fwd/bwd loop)
        self._mark_steps = torch.device(device).type == "cuda" and self.options.get("mode") == "reduce-overhead"

    def __call__(self, *args: Any) -> dict[str, torch.Tensor]:
        if self._mark_steps:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._compiled(*args)
        # a CUDA graph's outputs are overwritten by its next replay: the logged values are copied out
        return {key: value if key == "loss" else value.clone() for key, value in out.items()}


class CompiledOptimizerStep:
    """``optimizer.step()`` through ``torch.compile``: the whole parameter update as one graph.

    ``fullgraph`` is off: PyTorch's optimizers break the graph on purpose before the update (state set-up).
    The compiled step guards on the identity of the optimizer's state tensors, so the state is reset and
    restored in place (:meth:`reset_state`, :meth:`load_state_dict`): new tensors would recompile it.

    Args:
        optimizer: the trainer's optimizer.
        options: ``torch.compile`` keyword arguments over :data:`COMPILE_DEFAULTS` (``fullgraph`` is ignored).

    Raises:
        ValueError: when ``options`` is not a mapping.
    """

    #: optimizers whose fresh state is all zeros, so that zeroing in place equals clearing it
    ZERO_INIT_STATE = (torch.optim.Adam, torch.optim.AdamW)

    def __init__(self, optimizer: torch.optim.Optimizer, options: Mapping[str, Any] | None = None) -> None:
        self.optimizer = optimizer
        self.options = {**_compile_options(options), "fullgraph": False}
        self._compiled = torch.compile(optimizer.step, **self.options)

    def __call__(self) -> None:
        self._compiled()

    def _param_states(self) -> list[dict[str, Any]]:
        """The per-parameter state dicts in ``state_dict()`` order (``{}`` where a parameter has none)."""
        return [self.optimizer.state.get(p, {}) for group in self.optimizer.param_groups for p in group["params"]]

    def reset_state(self) -> None:
        """Forget the moments, as ``optimizer.state.clear()`` does, in place for Adam and AdamW."""
        if not isinstance(self.optimizer, self.ZERO_INIT_STATE):
            self.optimizer.state.clear()  # another optimizer's fresh state is not all zeros: recompiles once
            return
        for state in self._param_states():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    value.zero_()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``optimizer.load_state_dict(state_dict)``, the loaded values then copied into the state tensors that
        existed before, where their shapes match (new tensors would recompile the update).

        Args:
            state_dict: a state dict of this optimizer (e.g. a deep copy kept at the round's best model).
        """
        before = self._param_states()
        self.optimizer.load_state_dict(state_dict)
        for old, new in zip(before, self._param_states()):
            for key, value in new.items():
                if isinstance(old.get(key), torch.Tensor) and getattr(value, "shape", None) == old[key].shape:
                    new[key] = old[key].copy_(value)
