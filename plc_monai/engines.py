"""The semi-supervised trainer: step 1 (warm-up, Dice on labeled slices, Eq. 1) and step 2 (joint: Dice on the
labeled slices plus ``lambda_cont * PixelContrastiveLoss`` on labeled and pseudo-labeled slices, Eq. 2).

The paper's method variants are switches (see docs/method.md); a new variant overrides :meth:`warmup_step`
or :meth:`joint_step`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from monai.engines import Trainer

from plc_monai._ignite import Engine, Events
from plc_monai.compiled_step import CompiledLosses, CompiledOptimizerStep, check_compilable
from plc_monai.data.slice_pool import SlicePool
from plc_monai.pseudo_labels import PseudoLabelStore
from plc_monai.runtime import autocast, autocast_dtype, unwrap

__all__ = ["SemiSupervisedTrainer"]

_UNLABELED_SLICES = ("any", "all_classes")
_AUGMENTATIONS = ("seg_augmentation", "intensity_augmentation")


class SemiSupervisedTrainer(Trainer):
    """Warm-up then joint training of a :class:`~plc_monai.networks.ContrastiveHeadUNet`, iteration based.

    Args:
        device: training device.
        max_epochs: ``total_iterations / epoch_length`` (an "epoch" is only a logging/checkpoint unit here).
        epoch_length: iterations per epoch.
        network: a module with ``forward`` (logits) and ``forward_train`` (logits, embedding).
        optimizer: optimizer over all of ``network``'s parameters (Adam, lr 1e-3 in the paper).
        seg_loss: called as ``seg_loss(logits [B, C, H, W], labels [B, 1, H, W])`` (MONAI ``DiceLoss``).
        labeled: the labeled slices (images ``[N_l, 1, H, W]``, labels ``[N_l, H, W]``) on ``device``.
        unlabeled: the unlabeled slices ``[N_u, 1, H, W]`` on ``device``; ``None`` or empty: supervised only.
        pseudo_labels: the store of the unlabeled slices' pseudo-labels.
        contrastive_loss: called as ``loss(embedding [B, D, H, W], labels [B, 1, H, W])``.
        warmup_iterations: iterations of step 1 (``N1`` = 5000).
        batch_size: slices per iteration in both steps (20).
        labeled_per_batch: labeled slices per joint iteration (10); the rest are unlabeled.
        lambda_cont: weight of the contrastive loss (0.1); 0 skips the contrastive branch.
        pseudo_labels_in_seg_loss: also apply the segmentation loss to the pseudo-labeled slices (self-training).
        seg_weight: weight of the segmentation loss in the joint phase; 0: contrastive pre-training.
        finetune_iterations: iterations of a last, segmentation-only phase after the joint phase (0: none).
        unlabeled_in_contrastive: feed pseudo-labeled slices to the contrastive loss; ``False``: labeled only.
        train_forward: a module returning ``(logits, embedding)`` for every training forward pass, e.g.
            ``DistributedDataParallel(TrainForward(network))``; by default the network's own methods.
        seg_augmentation: batched dict transform on ``{"image": [B, 1, H, W], "label": [B, 1, H, W]}``.
        intensity_augmentation: batched dict transform on ``{"image": ...}``.
        shared_forward: one forward pass of all slices feeds both losses (default); ``False`` runs a second
            pass of un-warped slices for the contrastive loss, as the authors' code did.
        amp: autocast the forward pass (bf16 where supported, else fp16 with a gradient scaler).
        channels_last: use the channels-last memory format (CUDA only).
        reset_optimizer_at_joint: clear the optimizer's moments when step 2 starts (the authors build a new one).
        round_length: iterations per pseudo-labeling round (``P``) for :meth:`round_index`; 0: one round.
        restore_best_each_round: at the start of every joint round after the first, load the best model and
            optimizer state of the round just ended (kept by :class:`~plc_monai.checkpointing.BestModelPerPhase`),
            as the authors' code does; that iteration's pseudo-label refresh then predicts with it.
        unlabeled_slices: ``"any"`` admitted slice, or ``"all_classes"``: only slices whose pseudo-label holds
            every foreground class, as the authors did (all admitted slices when none does).
        seed: seed of the slice sampler; the augmentations get ``seed + 1`` and ``seed + 2``.
        log_interval: iterations between progress lines.
        compile_step: compile :meth:`step_losses` (with its backward) and the optimizer step with ``torch.compile``
            (see :mod:`plc_monai.compiled_step`).
        compile_options: ``torch.compile`` arguments over :data:`~plc_monai.compiled_step.COMPILE_DEFAULTS`.
        train_handlers: Ignite/MONAI handlers to attach.

    Raises:
        ValueError: for inconsistent sizes (e.g. ``labeled_per_batch > batch_size``), an empty labeled pool,
            or a ``compile_step`` configuration that cannot be one graph.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        epoch_length: int,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        labeled: SlicePool,
        unlabeled: SlicePool | None = None,
        pseudo_labels: PseudoLabelStore | None = None,
        contrastive_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        warmup_iterations: int = 5000,
        batch_size: int = 20,
        labeled_per_batch: int = 10,
        lambda_cont: float = 0.1,
        pseudo_labels_in_seg_loss: bool = False,
        seg_weight: float = 1.0,
        finetune_iterations: int = 0,
        unlabeled_in_contrastive: bool = True,
        train_forward: torch.nn.Module | None = None,
        seg_augmentation: Callable | None = None,
        intensity_augmentation: Callable | None = None,
        shared_forward: bool = True,
        amp: bool = False,
        channels_last: bool = False,
        reset_optimizer_at_joint: bool = True,
        round_length: int = 0,
        restore_best_each_round: bool = False,
        unlabeled_slices: str = "any",
        seed: int = 0,
        log_interval: int = 50,
        compile_step: bool = False,
        compile_options: Mapping[str, Any] | None = None,
        train_handlers: Sequence | None = None,
    ) -> None:
        if len(labeled) == 0 or labeled.labels is None:
            raise ValueError("the labeled set is empty: at least one labeled volume is needed for the warm-up.")
        if not 0 < labeled_per_batch <= batch_size:
            raise ValueError(f"labeled_per_batch must be in [1, batch_size={batch_size}], got {labeled_per_batch}.")
        non_negative = {"warmup_iterations": warmup_iterations, "finetune_iterations": finetune_iterations,
                        "lambda_cont": lambda_cont, "round_length": round_length}
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if unlabeled_slices not in _UNLABELED_SLICES:
            raise ValueError(f"unlabeled_slices must be one of {_UNLABELED_SLICES}, got {unlabeled_slices!r}.")
        device = torch.device(device)
        self.total_iterations = int(max_epochs) * int(epoch_length)
        has_unlabeled = unlabeled is not None and len(unlabeled) > 0
        if warmup_iterations + finetune_iterations > self.total_iterations:
            raise ValueError(f"warm-up ({warmup_iterations}) + fine-tuning ({finetune_iterations}) iterations exceed "
                             f"the {self.total_iterations} iterations of the run (max_epochs * epoch_length).")
        if self.total_iterations > warmup_iterations + finetune_iterations:
            if not has_unlabeled:
                logging.getLogger(__name__).warning("no unlabeled slices: the joint phase trains on the labeled "
                                                    "slices only (supervised).")
            elif pseudo_labels is None:
                raise ValueError("the joint phase needs a PseudoLabelStore for the unlabeled slices.")
            if lambda_cont > 0 and contrastive_loss is None:
                raise ValueError("lambda_cont > 0 needs a contrastive_loss.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=itertools.repeat(None),  # batches are drawn from the in-memory slices by index
            epoch_length=epoch_length,
            handlers=None,
            amp=False,  # autocast is handled here (bf16 without a scaler where possible)
            decollate=False,
        )
        self.network = network
        self.optimizer = optimizer
        self.seg_loss = seg_loss
        self.contrastive_loss = contrastive_loss
        self.labeled = labeled
        self.unlabeled = unlabeled if has_unlabeled else None
        self.pseudo_labels = pseudo_labels if has_unlabeled else None
        self.warmup_iterations = int(warmup_iterations)
        self.batch_size = int(batch_size)
        self.labeled_per_batch = int(labeled_per_batch)
        self.lambda_cont = float(lambda_cont)
        self.pseudo_labels_in_seg_loss = bool(pseudo_labels_in_seg_loss)
        self.seg_weight = float(seg_weight)
        self.finetune_iterations = int(finetune_iterations)
        self.unlabeled_in_contrastive = bool(unlabeled_in_contrastive)
        self.train_forward = train_forward
        self.seg_augmentation = seg_augmentation
        self.intensity_augmentation = intensity_augmentation
        self.shared_forward = shared_forward
        self.use_amp = bool(amp)
        self.amp_dtype = autocast_dtype(device)
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.use_amp and self.amp_dtype == torch.float16 else None
        self.channels_last = channels_last and device.type == "cuda"
        self.reset_optimizer_at_joint = reset_optimizer_at_joint
        self.round_length = int(round_length)
        self.restore_best_each_round = bool(restore_best_each_round)
        self.unlabeled_slices = unlabeled_slices
        self.log_interval = max(1, int(log_interval))
        self.compiled_losses: CompiledLosses | None = None
        self.compiled_optimizer_step: CompiledOptimizerStep | None = None
        if compile_step:
            check_compilable(self)
            self.compiled_losses = CompiledLosses(self.step_losses, device, compile_options)
            self.compiled_optimizer_step = CompiledOptimizerStep(optimizer, compile_options)
        # under torch.distributed each rank draws its own slices and augmentations
        rank_seed = seed + 1000 * int(self.state.rank)
        self.sampler_generator = torch.Generator().manual_seed(rank_seed)
        for offset, aug in ((1, seg_augmentation), (2, intensity_augmentation)):
            if aug is not None and hasattr(aug, "set_random_state"):
                aug.set_random_state(rank_seed + offset)
        self.best_warmup_state: dict[str, torch.Tensor] | None = None
        # {"round": k, "network": weights, "optimizer": state} of the best model of the current round
        self.best_round_state: dict[str, Any] | None = None
        self.joint_started = False
        self._weights_cache: tuple[int, torch.Tensor] | None = None
        self._warned: set[str] = set()
        # objects whose state a ResumeCheckpoint saves; handlers of this package add themselves on attach
        extras = SimpleNamespace(state_dict=self.extras_state_dict, load_state_dict=self.load_extras_state_dict)
        self.resumable: dict[str, Any] = {"trainer": self, "trainer_extras": extras}
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        if self.warmup_iterations < self.joint_end:
            self.add_event_handler(Events.ITERATION_STARTED(once=self.warmup_iterations + 1), self._start_joint)
            if self.restore_best_each_round and self.round_length > 0:
                self.add_event_handler(Events.ITERATION_STARTED(event_filter=self._round_start), self._restore_round_best)
        for handler in train_handlers or ():
            handler.attach(self)

    # --- phases ----------------------------------------------------------------------------------
    @property
    def joint_end(self) -> int:
        """Iteration count at which the joint phase ends (the fine-tuning phase, if any, follows)."""
        return self.total_iterations - self.finetune_iterations

    @property
    def final_phase(self) -> str:
        """The last phase of the schedule: its best model is the deployable one."""
        return self.phase(self.total_iterations)

    def phase(self, iteration: int | None = None) -> str:
        """``"warmup"``, ``"joint"`` or ``"finetune"`` for ``iteration`` (1-based; the current one by default)."""
        iteration = self.state.iteration if iteration is None else iteration
        if iteration <= self.warmup_iterations:
            return "warmup"
        return "joint" if iteration <= self.joint_end else "finetune"

    def round_index(self, iteration: int | None = None) -> int:
        """0 in the warm-up, ``k`` (1-based) in the ``k``-th pseudo-labeling round of the joint phase, one
        past the last round in the fine-tuning phase."""
        iteration = self.state.iteration if iteration is None else iteration
        if iteration <= self.warmup_iterations:
            return 0
        last = iteration if iteration <= self.joint_end else self.joint_end + 1
        return 1 if self.round_length <= 0 else (last - self.warmup_iterations - 1) // self.round_length + 1

    def _round_start(self, engine: Engine, event: int) -> bool:
        """True at the first iteration of every joint round after the first."""
        since = event - self.warmup_iterations - 1
        return since > 0 and since % self.round_length == 0 and event <= self.joint_end

    def keep_round_best(self, weights: dict[str, torch.Tensor]) -> None:
        """Remember ``weights`` and a copy of the optimizer state as the best model of the current round."""
        optimizer = copy.deepcopy(self.optimizer.state_dict())
        self.best_round_state = {"round": self.round_index(), "network": weights, "optimizer": optimizer}

    def _restore_round_best(self, engine: Engine | None = None) -> None:
        """Continue from the best model of the round that just ended (weights and optimizer state)."""
        best = self.best_round_state
        ended = self.round_index() - 1
        if best is None or best["round"] != ended:
            self.logger.info(f"round {ended + 1}: no validated model of round {ended} to restore; continuing")
            return
        unwrap(self.network).load_state_dict(best["network"])
        (self.compiled_optimizer_step or self.optimizer).load_state_dict(best["optimizer"])
        self.logger.info(f"round {ended + 1}: continuing from the best model of round {ended}")

    def _start_joint(self, engine: Engine | None = None) -> None:
        """Step 2 starts from the best warm-up weights (the paper's theta^(0), xi^(0)) with a fresh optimizer."""
        if self.best_warmup_state is not None:
            unwrap(self.network).load_state_dict(self.best_warmup_state)
            self.logger.info("joint phase: starting from the best warm-up weights")
        if self.reset_optimizer_at_joint:
            if self.compiled_optimizer_step is not None:
                self.compiled_optimizer_step.reset_state()  # in place: new state tensors would recompile the update
            else:
                self.optimizer.state.clear()
        self.joint_started = True

    # --- batches ---------------------------------------------------------------------------------
    def _draw(self, high: int, count: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=self.sampler_generator).to(self.state.device, non_blocking=True)

    def _draw_unlabeled(self, count: int) -> torch.Tensor:
        store = self.pseudo_labels
        if self._weights_cache is None or self._weights_cache[0] != store.version:
            # the sampling weights change only at a refresh: keep them on the host per store version
            weights = store.keep.float().cpu()
            if not bool(weights.any()):
                self._warn_once("all-rejected", "the quality filter rejected every unlabeled volume; "
                                "sampling all of them.")
                weights = torch.ones_like(weights)
            elif self.unlabeled_slices == "all_classes":
                complete = weights * self._complete_slices(store.labels).float().cpu()
                if bool(complete.any()):
                    weights = complete
                else:
                    self._warn_once("none-complete", "no unlabeled slice holds every class in its pseudo-label; "
                                    "sampling all admitted slices.")
            self._weights_cache = (store.version, weights)
        idx = torch.multinomial(self._weights_cache[1], count, replacement=True, generator=self.sampler_generator)
        return idx.to(self.state.device, non_blocking=True)

    def _complete_slices(self, labels: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: the slices of ``labels [N, H, W]`` that hold every foreground class."""
        num_classes = int(getattr(self.contrastive_loss, "num_classes", 0)) or int(self.labeled.labels.max()) + 1
        flat = labels.reshape(labels.shape[0], -1)
        return torch.stack([(flat == c).any(dim=1) for c in range(1, num_classes)], dim=1).all(dim=1)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.logger.warning(message)

    def _augment(self, images: torch.Tensor, labels: torch.Tensor, spatial: bool, intensity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch ``images [B, 1, H, W]`` / ``labels [B, H, W]``; returns labels ``[B, 1, H, W]``."""
        labels = labels.unsqueeze(1)
        if spatial and self.seg_augmentation is not None:
            out = self.seg_augmentation({"image": images, "label": labels})
            images, labels = out["image"], out["label"]
        if intensity and self.intensity_augmentation is not None:
            images = self.intensity_augmentation({"image": images})["image"]
        return images, labels.long()

    # --- one iteration of each phase -------------------------------------------------------------
    def _forward(self, x: torch.Tensor, embedding: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Logits (and embeddings when asked) of ``x``, plus a zero-valued term touching every output (DDP
        needs a gradient for every parameter, so ``train_forward`` computes both heads)."""
        x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        if self.train_forward is not None:
            logits, emb = self.train_forward(x)
            return logits, emb if embedding else None, 0.0 * (emb.float().mean() + logits.float().mean())
        if embedding:
            logits, emb = self.network.forward_train(x)
            return logits, emb, logits.new_zeros(())
        return self.network(x), None, x.new_zeros(())

    def warmup_step(self) -> dict[str, torch.Tensor]:
        """Step 1 (and the fine-tuning phase): Dice loss on ``batch_size`` augmented labeled slices."""
        if self.phase() == "finetune" and self.pseudo_labels_in_seg_loss and self.unlabeled is not None:
            # semi-supervised fine-tuning: labeled + pseudo-labeled slices, no contrastive term
            return self.joint_step(seg_weight=1.0, lambda_cont=0.0)
        idx = self._draw(len(self.labeled), self.batch_size)
        images, labels = self._augment(self.labeled.images[idx], self.labeled.labels[idx], spatial=True, intensity=True)
        return (self.compiled_losses or self.step_losses)(images, labels, self.batch_size, 1.0, 0.0)

    def step_losses(
        self, x: torch.Tensor, y: torch.Tensor, seg_count: int, seg_weight: float, lambda_cont: float
    ) -> dict[str, torch.Tensor]:
        """The device part of an iteration with one shared forward pass (one graph for ``compile_step``).

        Args:
            x: ``[B, 1, H, W]`` augmented images; the first ``seg_count`` have (pseudo-)labels for the Dice loss.
            y: ``[B, 1, H, W]`` long labels and pseudo-labels.
            seg_count: slices the segmentation loss sees (the first ones of the batch).
            seg_weight: weight of the segmentation loss.
            lambda_cont: weight of the contrastive loss over all ``B`` slices; 0 skips the embedding.

        Returns:
            ``{"loss": weighted sum (with graph), "seg_loss": ..., "cont_loss": ... (when lambda_cont > 0)}``.
        """
        use_cont = lambda_cont > 0
        with autocast(self.state.device, self.use_amp, self.amp_dtype):
            logits, embedding, zero = self._forward(x if use_cont else x[:seg_count], embedding=use_cont)
            seg = self.seg_loss(logits[:seg_count].float(), y[:seg_count])
        loss = seg_weight * seg + zero
        out: dict[str, torch.Tensor] = {"seg_loss": seg.detach()}
        if use_cont:
            cont = self.contrastive_loss(embedding, y)
            loss = loss + lambda_cont * cont
            out["cont_loss"] = cont.detach()
        out["loss"] = loss
        return out

    def joint_step(self, seg_weight: float | None = None, lambda_cont: float | None = None) -> dict[str, torch.Tensor]:
        """Step 2: ``seg_weight`` * Dice on the labeled slices (+ pseudo-labeled ones for self-training)
        + ``lambda_cont`` * contrastive loss on all slices with labels and pseudo-labels."""
        seg_weight = self.seg_weight if seg_weight is None else seg_weight
        lambda_cont = self.lambda_cont if lambda_cont is None else lambda_cont
        n_l = self.labeled_per_batch
        if self.unlabeled is None or not self.unlabeled_in_contrastive and not self.pseudo_labels_in_seg_loss:
            # labeled slices only (no unlabeled data, or the fully supervised variant of two-step training)
            idx_l = self._draw(len(self.labeled), self.batch_size)
            images, labels = self.labeled.images[idx_l], self.labeled.labels[idx_l]
            n_l = self.batch_size
        else:
            idx_l, idx_u = self._draw(len(self.labeled), n_l), self._draw_unlabeled(self.batch_size - n_l)
            images = torch.cat([self.labeled.images[idx_l], self.unlabeled.images[idx_u]])
            labels = torch.cat([self.labeled.labels[idx_l], self.pseudo_labels.labels[idx_u]])
        seg_count = self.batch_size if self.pseudo_labels_in_seg_loss else n_l
        if self.shared_forward or lambda_cont <= 0:
            x, y = self._augment(images, labels, spatial=True, intensity=True)
            return (self.compiled_losses or self.step_losses)(x, y, seg_count, seg_weight, lambda_cont)
        # the authors' layout: a second forward pass of un-warped slices for the contrastive loss
        x_seg, y_seg = self._augment(images[:seg_count], labels[:seg_count], spatial=True, intensity=True)
        x_c, cont_labels = self._augment(images, labels, spatial=False, intensity=True)
        with autocast(self.state.device, self.use_amp, self.amp_dtype):
            logits, _, zero_a = self._forward(x_seg, embedding=False)
            seg = self.seg_loss(logits.float(), y_seg)
            _, embedding, zero_b = self._forward(x_c, embedding=True)
        cont = self.contrastive_loss(embedding, cont_labels)
        loss = seg_weight * seg + zero_a + zero_b + lambda_cont * cont
        return {"seg_loss": seg.detach(), "cont_loss": cont.detach(), "loss": loss}

    def _iteration(self, engine: Engine, batchdata: Any = None) -> dict[str, torch.Tensor]:
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.joint_step() if self.phase(engine.state.iteration) == "joint" else self.warmup_step()
        loss = out["loss"]
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            (self.compiled_optimizer_step or self.optimizer.step)()
        # a compiled step's loss lives in a CUDA graph's output buffer, which the next replay overwrites
        out["loss"] = loss.detach() if self.compiled_losses is None else loss.detach().clone()
        return out

    # --- resumable state beyond the Ignite engine's counters -------------------------------------
    def extras_state_dict(self) -> dict[str, Any]:
        """Sampler and augmentation RNG states, global RNG states, the best warm-up weights, phase flag."""
        # numpy's RNG key array as a tensor, so that ``torch.load(weights_only=True)`` reads it
        name, keys, pos, has_gauss, cached = np.random.get_state()
        numpy_rng = (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))
        augmentations = {key: getattr(getattr(self, key), "generator", None) for key in _AUGMENTATIONS}
        return {
            "sampler_generator": self.sampler_generator.get_state(),
            **{key: g.get_state() if isinstance(g, torch.Generator) else None for key, g in augmentations.items()},
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": numpy_rng,
            "python_rng": random.getstate(),
            "best_warmup_state": self.best_warmup_state,
            "best_round_state": self.best_round_state,
            "joint_started": self.joint_started,
        }

    def load_extras_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler_generator.set_state(state["sampler_generator"])
        for key in _AUGMENTATIONS:
            gen = getattr(getattr(self, key), "generator", None)
            if state.get(key) is not None and isinstance(gen, torch.Generator):
                gen.set_state(state[key])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        name, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(state["python_rng"])
        self.best_warmup_state = state["best_warmup_state"]
        self.best_round_state = state.get("best_round_state")
        self.joint_started = bool(state["joint_started"])
