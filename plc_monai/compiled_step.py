"""The optional compiled training step (``compile_step``): forward pass and both losses as one graph.

:meth:`SemiSupervisedTrainer.step_losses <plc_monai.engines.SemiSupervisedTrainer.step_losses>` (the
network's forward pass, the Dice loss and the contrastive loss of one iteration) goes through
``torch.compile`` with ``fullgraph=True`` and ``dynamic=False``. On CUDA the default
``mode="reduce-overhead"`` replays the forward graph and its backward graph as CUDA graphs, instead of
launching some hundreds of small kernels from Python each iteration. What stays eager, around the
captured part: drawing the slices, the augmentations (their random draws change every iteration), the
optimizer step, the pseudo-label refresh and validation (they call the network itself, which is not
compiled), and every Ignite handler.

A configuration that cannot be one graph is refused up front with a ``ValueError`` (see
:func:`check_compilable`) rather than left to ``torch.compile``'s graph-break errors. Whether the
captured step is faster is a GPU question; ``docs/performance.md`` says what has been measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.losses import DiceLoss

from plc_monai.losses import PixelContrastiveLoss

__all__ = ["CompiledLosses", "check_compilable", "COMPILE_DEFAULTS"]

#: ``torch.compile`` arguments of the compiled step; ``compile_options`` overrides them
COMPILE_DEFAULTS: dict[str, Any] = {"mode": "reduce-overhead", "fullgraph": True, "dynamic": False}

StepLosses = Callable[[torch.Tensor, torch.Tensor, int, float, float], dict[str, torch.Tensor]]


def check_compilable(trainer: Any) -> None:
    """Refuse the trainer configurations that cannot be captured as one graph.

    Args:
        trainer: a :class:`~plc_monai.engines.SemiSupervisedTrainer` being built with ``compile_step``.

    Raises:
        ValueError: with MONAI's ``DiceLoss`` as the segmentation loss (one graph break per call), a
            DistributedDataParallel ``train_forward``, a gradient scaler (fp16 autocast:
            its inf check reads the device), ``shared_forward=False`` (two passes per iteration), or a
            contrastive loss that reads device values on the host (``check_inputs=True``), returns a
            data-dependent number of terms (``reduction="none"``) or draws from its own generator.
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
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"compile_options must be a mapping of torch.compile arguments, got {options!r}.")
        self.options = {**COMPILE_DEFAULTS, **(options or {})}
        if self.options.get("backend", "inductor") != "inductor":
            self.options.pop("mode", None)
        self._compiled = torch.compile(step_losses, **self.options)
        # CUDA graph trees need to be told where an iteration starts (the step is not a plain fwd/bwd loop)
        self._mark_steps = torch.device(device).type == "cuda" and self.options.get("mode") == "reduce-overhead"

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, seg_count: int, seg_weight: float, lambda_cont: float
    ) -> dict[str, torch.Tensor]:
        if self._mark_steps:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._compiled(x, y, seg_count, seg_weight, lambda_cont)
        # a CUDA graph's outputs are overwritten by its next replay: the logged values are copied out
        return {key: value if key == "loss" else value.clone() for key, value in out.items()}
