"""Ignite handlers of the method: :class:`PseudoLabelRefresh` re-estimates the unlabeled set's pseudo-labels."""

from __future__ import annotations

import logging
import gzip
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.utils import eval_mode

from plc_monai._ignite import Engine, Events
from plc_monai.pseudo_labels import PseudoLabelStore
from plc_monai.runtime import autocast, is_main_process
from plc_monai.atomic_files import atomic_write_bytes

__all__ = ["PseudoLabelRefresh", "predict_labels"]


def predict_labels(
    network: torch.nn.Module, images: torch.Tensor, batch_size: int = 64, amp: bool = False, return_logits: bool = False
) -> torch.Tensor:
    """Argmax labels of ``network`` over ``images``, batched, in eval mode (restored afterwards), without gradients.

    Args:
        network: returns logits ``[B, C, *spatial]`` from ``forward``.
        images: ``[N, C_in, *spatial]`` on the network's device.
        batch_size: slices per forward pass.
        amp: run under autocast (bf16 where supported, else fp16).
        return_logits: return float32 logits ``[N, C, *spatial]`` instead of labels.

    Returns:
        ``[N, *spatial]`` uint8 labels (or logits).
    """
    outputs = []
    with eval_mode(network), torch.inference_mode(), autocast(images.device, amp):
        for start in range(0, images.shape[0], batch_size):
            logits = network(images[start : start + batch_size])
            outputs.append(logits.float() if return_logits else logits.argmax(1).to(torch.uint8))
    return torch.cat(outputs)


def _volume_dice(a: torch.Tensor, b: torch.Tensor, volume_index: torch.Tensor, num_volumes: int, num_classes: int) -> torch.Tensor:
    """Mean foreground Dice between label maps ``a`` and ``b`` ``[N, H, W]`` per volume, ``[V]``.

    Classes absent from both are left out of the mean; a volume with no foreground in either gets 1.
    """
    # foreground voxel counts [N, C-1] of the intersection, of a and of b
    counts = [F.one_hot(x, num_classes).flatten(1, -2).sum(1)[:, 1:].float()
              for x in (torch.where(a == b, a.long(), 0), a.long(), b.long())]
    sums = torch.zeros(num_volumes, 3, num_classes - 1, device=a.device)
    sums.index_add_(0, volume_index, torch.stack(counts, 1))
    denom = sums[:, 1] + sums[:, 2]
    dice = torch.where(denom > 0, 2 * sums[:, 0] / denom.clamp_min(1), torch.nan)
    return torch.nan_to_num(torch.nanmean(dice, dim=1), nan=1.0)


def _random_similarity(num: int, generator: torch.Generator) -> torch.Tensor:
    """Per-volume 2x2 matrices: rotation U(-30, 30) deg, scale U(0.9, 1.1) or a left-right flip, one of the three."""
    choice = torch.randint(0, 3, (num,), generator=generator)
    angle = torch.deg2rad(torch.empty(num).uniform_(-30, 30, generator=generator)) * (choice == 0)
    scale = torch.where(choice == 1, torch.empty(num).uniform_(0.9, 1.1, generator=generator), torch.ones(num))
    flip = torch.where(choice == 2, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    return torch.stack([torch.stack([cos * flip, -sin], -1), torch.stack([sin * flip, cos], -1)], -2)


class PseudoLabelRefresh:
    """Re-estimate the pseudo-labels of the unlabeled set with the current network (an Ignite handler).

    Fires before the first iteration after ``start_iteration`` and then every ``interval`` iterations
    (``P`` = 5000 in the paper): predicts every unlabeled slice (:func:`predict_labels`), writes the labels
    into ``store`` in place, logs the duration and the fraction of changed pixels, and optionally writes
    NIfTI volumes. The optional quality filter (Table VII) predicts each volume under two random similarity
    transforms (rotation, scale or flip), maps them back and keeps the volume only if their mean foreground
    Dice exceeds ``quality_threshold``. Under ``torch.distributed`` the ranks predict shards and all-reduce
    them; only rank 0 logs and writes files.

    Args:
        store: the :class:`~plc_monai.pseudo_labels.PseudoLabelStore` to fill.
        images: unlabeled images ``[N, C_in, H, W]`` (un-augmented, preprocessed) on the network's device.
        network: the model; ``forward`` returns logits.
        interval: iterations between refreshes (``P``).
        start_iteration: iteration count at which the joint phase starts (0: refresh before the first
            iteration).
        num_refreshes: refresh at most this many times (``None``: no limit).
        batch_size: slices per forward pass.
        amp: autocast for the prediction.
        quality_threshold: Dice threshold of the volume filter; 0 disables it.
        num_classes: classes incl. background (needed by the quality filter).
        output_dir: when given, each refresh writes ``<output_dir>/round_<k>/<volume>.nii.gz``.
        volume_names: one name per volume (``store.volume_index`` values), for the NIfTI files.
        volume_affines: one 4x4 affine per volume (the preprocessed grid), for the NIfTI files.
        seed: seed of the quality filter's random transforms.
        name: logger name; the engine's logger when ``None``.

    Raises:
        ValueError: when ``interval < 1``, the images do not match the store, or the filter is on
            without ``num_classes``.
    """

    def __init__(
        self,
        store: PseudoLabelStore,
        images: torch.Tensor,
        network: torch.nn.Module,
        interval: int = 5000,
        start_iteration: int = 0,
        num_refreshes: int | None = None,
        batch_size: int = 64,
        amp: bool = False,
        quality_threshold: float = 0.0,
        num_classes: int | None = None,
        output_dir: str | os.PathLike | None = None,
        volume_names: Sequence[str] | None = None,
        volume_affines: Sequence[Any] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"PseudoLabelRefresh interval must be >= 1 iteration, got {interval}.")
        if images.shape[0] != len(store):
            raise ValueError(f"{images.shape[0]} unlabeled images but the store holds {len(store)} pseudo-labels.")
        if images.shape[0] > 0 and images.shape[2:] != store.labels.shape[1:]:
            raise ValueError(f"unlabeled images have spatial shape {list(images.shape[2:])}, "
                             f"the store holds {list(store.labels.shape[1:])}.")
        if quality_threshold > 0 and num_classes is None:
            raise ValueError("the pseudo-label quality filter (quality_threshold > 0) needs num_classes.")
        self.store = store
        self.images = images
        self.network = network
        self.interval = int(interval)
        self.start_iteration = int(start_iteration)
        self.max_refreshes = num_refreshes
        self.batch_size = batch_size
        self.amp = amp
        self.quality_threshold = float(quality_threshold)
        self.num_classes = num_classes
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.volume_names = list(volume_names) if volume_names is not None else None
        self.volume_affines = list(volume_affines) if volume_affines is not None else None
        self.generator = torch.Generator().manual_seed(seed)
        self.logger = logging.getLogger(name) if name else None
        self.history: list[dict[str, float]] = []

    # --- Ignite plumbing -------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Register on ``ITERATION_STARTED`` at the refresh iterations of ``engine``."""
        if self.logger is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.ITERATION_STARTED(event_filter=self._due), self)
        if hasattr(engine, "resumable"):
            engine.resumable["pseudo_label_refresh"] = self

    def _due(self, engine: Engine, event: int) -> bool:
        # ITERATION_STARTED carries the count of the iteration about to run (1-based): the refresh
        # happens before iterations start_iteration + 1, start_iteration + 1 + interval, ...
        done = event - 1 - self.start_iteration
        if done < 0 or done % self.interval != 0:
            return False
        return self.max_refreshes is None or done // self.interval < self.max_refreshes

    def __call__(self, engine: Engine | None = None) -> None:
        record = self.refresh(iteration=None if engine is None else engine.state.iteration)
        if engine is not None:
            # scalars in state.metrics reach TensorBoard through the progress handler
            engine.state.metrics["pseudo_label_changed_fraction"] = record["changed_fraction"]
            engine.state.metrics["pseudo_label_refresh_seconds"] = record["duration_s"]
            engine.state.metrics["pseudo_label_kept_fraction"] = record["kept_fraction"]

    # --- the work --------------------------------------------------------------------------------
    def _predict(self) -> torch.Tensor:
        """Labels of every unlabeled slice; under torch.distributed each rank predicts a shard."""
        n = self.images.shape[0]
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return predict_labels(self.network, self.images, self.batch_size, self.amp)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        per_rank = math.ceil(n / world)
        lo, hi = min(rank * per_rank, n), min((rank + 1) * per_rank, n)
        # int32 zeros everywhere but this rank's shard, then a sum: works on gloo and nccl
        labels = torch.zeros((n, *self.images.shape[2:]), dtype=torch.int32, device=self.images.device)
        if hi > lo:
            labels[lo:hi] = predict_labels(self.network, self.images[lo:hi], self.batch_size, self.amp).int()
        torch.distributed.all_reduce(labels)
        return labels.to(torch.uint8)

    def _quality_keep(self) -> torch.Tensor:
        """Volume-level filter of Table VII: ``[N]`` bool, True for slices of volumes kept."""
        vol = self.store.volume_index
        num_vol = int(vol.max()) + 1 if len(vol) else 0
        def warp(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:  # mats: [N, 2, 2], no translation
            grid = F.affine_grid(F.pad(mats, (0, 1)), list(x.shape), align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", align_corners=False)

        preds = []
        for _ in range(2):
            mats = _random_similarity(num_vol, self.generator).to(self.images.device)[vol]  # [N, 2, 2]
            warped = warp(self.images.float(), mats)
            logits = predict_labels(self.network, warped, self.batch_size, self.amp, return_logits=True)
            preds.append(warp(logits, torch.linalg.inv(mats)).argmax(1))
        dice = _volume_dice(preds[0], preds[1], vol, num_vol, int(self.num_classes))
        return (dice > self.quality_threshold)[vol]

    def refresh(self, iteration: int | None = None) -> dict[str, float]:
        """Re-estimate and store the pseudo-labels now; returns the logged numbers."""
        record = {"iteration": float(iteration if iteration is not None else -1), "round": float(self.store.version),
                  "changed_fraction": 0.0, "duration_s": 0.0, "kept_fraction": 0.0}
        if len(self.store) == 0:
            return record
        start = time.perf_counter()
        changed = self.store.update(self._predict(), self._quality_keep() if self.quality_threshold > 0 else None)
        duration = time.perf_counter() - start
        record.update(round=float(self.store.version), changed_fraction=changed, duration_s=duration,
                      kept_fraction=float(self.store.keep.float().mean()))
        self.history.append(record)
        if is_main_process():
            if self.logger is not None:
                self.logger.info(
                    f"pseudo-label refresh {self.store.version} at iteration {iteration}: "
                    f"{len(self.store)} slices in {duration:.2f} s, {100 * changed:.2f}% of pixels changed, "
                    f"{100 * record['kept_fraction']:.0f}% of slices kept"
                )
            if self.output_dir is not None:
                self._write_nifti()
        return record

    def _write_nifti(self) -> None:
        import nibabel as nib

        folder = self.output_dir / f"round_{self.store.version}"
        folder.mkdir(parents=True, exist_ok=True)
        vol = self.store.volume_index.cpu()
        labels = self.store.labels.cpu()
        for v in torch.unique(vol).tolist():
            volume = labels[vol == v].permute(1, 2, 0).numpy()  # [H, W, S], slices last
            name = self.volume_names[v] if self.volume_names else f"volume_{v:03d}"
            affine = np.eye(4) if self.volume_affines is None else np.asarray(self.volume_affines[v], dtype=float)
            image = nib.Nifti1Image(volume.astype(np.uint8), affine)
            atomic_write_bytes(folder / f"{name}.nii.gz", gzip.compress(image.to_bytes(), compresslevel=6))

    # --- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "generator": self.generator.get_state(), "store": self.store.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])
        self.store.load_state_dict(state["store"])
