"""Training speed of the engine against a plain-PyTorch yardstick, plus refresh, validation and memory.

Measured in one process, on one device, at one precision:

- (a) ``yardstick``: a training step written in plain PyTorch inside this file: the same
  :class:`~plc_monai.networks.ContrastiveHeadUNet`, fixed in-memory tensors already on the device, a
  hand-written soft Dice loss on the labeled half + ``lambda * PixelContrastiveLoss`` on all slices,
  Adam. No MONAI transform or loss, no data loading, no augmentation. ``yardstick_seg`` is the same
  step with the Dice loss only (for reference).
- (b) ``engine_seg`` and (c) ``engine_joint``: warm-up-phase and joint-phase iterations of one run of
  the real engine :class:`~plc_monai.engines.SemiSupervisedTrainer`, with in-memory slice pools, its
  sampler and the batched augmentations, built from the bundle's ``train.json`` (the same
  ``RandSpatialBatchd``, ``RandBrightnessContrastBatchd``, ``DiceLoss`` and ``PixelContrastiveLoss``
  objects). Iterations are timestamped with Ignite events; on CUDA the device is synchronised only at
  the two ends of each block of ``--iterations`` iterations.
- the contrastive loss alone (forward + backward) against its loop transcription
  (``tests/contrastive_reference.py``), through ``benchmarks/loss_speed.py``;
- one pseudo-label refresh (:meth:`PseudoLabelRefresh.refresh`) over the unlabeled pool, per volume;
- one validation run: a MONAI ``SupervisedEvaluator`` with the bundle's ``SliceInferer`` and metrics
  over in-memory volumes (the bundle's ``Invertd`` back to native spacing is left out: synthetic
  volumes have no preprocessing trace);
- peak GPU memory per section on CUDA, peak resident set size of the process;
- a projected wall time of the paper's schedule from these numbers, and with ``--full`` a measured one
  (the schedule run through the engine with the bundle's training handlers on synthetic pools).

Usage::

    python benchmarks/train_speed.py --out train_speed.json                 # paper size on CUDA, ci size on CPU
    python benchmarks/train_speed.py --size paper --full --out full.json     # + the whole schedule (GPU only)
    python benchmarks/train_speed.py --device cpu --size ci --threads 2

Needs torch, monai, pytorch-ignite (and this repository); nibabel is not needed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import math
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE_CONFIG = REPO / "bundles" / "acdc" / "configs" / "train.json"

#: reduced problem of ``--size ci`` (the paper's comes from the bundle config)
CI_SIZE = {"batch_size": 8, "labeled_per_batch": 4, "spatial": 64, "channels": [8, 16, 32, 32, 32, 32]}

#: targets of the performance issue, checked on CUDA at paper size
TARGET_JOINT_RATIO = 1.15
TARGET_FULL_SCHEDULE_S = 600.0
TARGET_PEAK_GIB = 4.0

#: iterations in each window of --profile-dir
PROFILE_ITERATIONS = 10

MIB = 1024.0**2


# ------------------------------------------------------------------------------------------------
# dependencies
# ------------------------------------------------------------------------------------------------


def _require(modules: Sequence[tuple[str, str]]) -> None:
    """Fail with one clear message when a needed package is missing.

    Args:
        modules: ``(import name, pip name)`` pairs.

    Raises:
        SystemExit: naming every missing package and the command that installs it.
    """
    missing = [pip for name, pip in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"train_speed.py needs {', '.join(missing)} (not importable in {sys.executable}); install them, "
            f"e.g. `python -m pip install {' '.join(missing)}` (the project pins monai==1.6.1, "
            "pytorch-ignite==0.5.5), or carry their wheels."
        )


def _import_project() -> dict[str, Any]:
    """Import what the benchmark uses from monai, ignite and plc_monai (after checking they exist)."""
    _require([("monai", "monai"), ("ignite", "pytorch-ignite")])
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    names = {
        "ConfigParser": ("monai.bundle", "ConfigParser"),
        "DataLoader": ("monai.data", "DataLoader"),
        "SupervisedEvaluator": ("monai.engines", "SupervisedEvaluator"),
        "ValidationHandler": ("monai.handlers", "ValidationHandler"),
        "Compose": ("monai.transforms", "Compose"),
        "CopyItemsd": ("monai.transforms", "CopyItemsd"),
        "AsDiscreted": ("monai.transforms", "AsDiscreted"),
        "Events": ("ignite.engine", "Events"),
        "SemiSupervisedTrainer": ("plc_monai.engines", "SemiSupervisedTrainer"),
        "PseudoLabelRefresh": ("plc_monai.handlers", "PseudoLabelRefresh"),
        "PseudoLabelStore": ("plc_monai.pseudo_labels", "PseudoLabelStore"),
        "SlicePool": ("plc_monai.data.slice_pool", "SlicePool"),
        "ResumeCheckpoint": ("plc_monai.checkpointing", "ResumeCheckpoint"),
        "BestModelPerPhase": ("plc_monai.checkpointing", "BestModelPerPhase"),
        "TrainingProgress": ("plc_monai.progress", "TrainingProgress"),
        "DegenerateBatchMonitor": ("plc_monai.monitoring", "DegenerateBatchMonitor"),
        "load_paper_split": ("plc_monai.data.splits", "load_paper_split"),
    }
    out: dict[str, Any] = {}
    for key, (module, attr) in names.items():
        try:
            out[key] = getattr(importlib.import_module(module), attr)
        except ImportError as err:
            raise SystemExit(f"train_speed.py: cannot import {attr} from {module}: {err}") from err
    out["loss_speed"] = _load_loss_speed()
    return out


def _load_loss_speed() -> ModuleType:
    """``benchmarks/loss_speed.py`` as a module (it imports the loop transcription from ``tests/``)."""
    path = REPO / "benchmarks" / "loss_speed.py"
    if not path.is_file() or not (REPO / "tests" / "contrastive_reference.py").is_file():
        raise SystemExit(f"train_speed.py needs {path} and {REPO / 'tests' / 'contrastive_reference.py'}.")
    spec = importlib.util.spec_from_file_location("plc_benchmarks_loss_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# ------------------------------------------------------------------------------------------------
# timing and memory helpers
# ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class _Section:
    """Context manager: wall seconds (synchronised at both ends) and the peak GPU memory of a block."""

    def __init__(self, device: torch.device, record: dict[str, Any], name: str) -> None:
        self.device, self.record, self.name = device, record, name

    def __enter__(self) -> _Section:
        _sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
        if exc[0] is None:
            if self.device.type == "cuda":
                self.record.setdefault("peak_gpu_mib", {})[self.name] = torch.cuda.max_memory_allocated(self.device) / MIB
            self.record.setdefault("peak_rss_mib_after", {})[self.name] = _peak_rss_mib()


class IterationClock:
    """Wall time of iterations ``first .. first + count - 1`` of an Ignite engine.

    Synchronises the device at ``ITERATION_STARTED`` of the first and ``ITERATION_COMPLETED`` of the
    last iteration only, so asynchronous execution inside the block is preserved.

    Args:
        events: ``ignite.engine.Events``.
        device: the training device.
        first: 1-based iteration at which the clock starts.
        count: number of iterations timed.
    """

    def __init__(self, events: Any, device: torch.device, first: int, count: int) -> None:
        if first < 1 or count < 1:
            raise ValueError(f"IterationClock needs first >= 1 and count >= 1, got first={first}, count={count}.")
        self.events, self.device, self.first, self.count = events, device, int(first), int(count)
        self.start: float | None = None
        self.stop: float | None = None

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(self.events.ITERATION_STARTED(once=self.first), self._begin)
        engine.add_event_handler(self.events.ITERATION_COMPLETED(once=self.first + self.count - 1), self._end)

    def _begin(self, engine: Any = None) -> None:
        _sync(self.device)
        self.start = time.perf_counter()

    def _end(self, engine: Any = None) -> None:
        _sync(self.device)
        self.stop = time.perf_counter()

    @property
    def ms_per_iteration(self) -> float:
        if self.start is None or self.stop is None:
            raise RuntimeError(f"iterations {self.first}..{self.first + self.count - 1} did not run.")
        return 1e3 * (self.stop - self.start) / self.count


class SyncProbe:
    """Records the host-device synchronisations of one iteration on CUDA (``torch.cuda.set_sync_debug_mode``).

    PyTorch emits a warning at every synchronising CUDA call while the debug mode is ``"warn"``; the
    warning's location is the Python line that made the call, so the record says where each sync is.

    Args:
        events: ``ignite.engine.Events``.
        device: the training device (nothing is recorded unless it is CUDA).
        iteration: 1-based iteration to inspect (run it after the timed blocks: warnings are slow).
    """

    def __init__(self, events: Any, device: torch.device, iteration: int) -> None:
        self.events, self.device, self.iteration = events, device, int(iteration)
        self.syncs: list[str] | None = None
        self._context: Any = None
        self._log: list | None = None

    def attach(self, engine: Any) -> None:
        if self.device.type != "cuda":
            return
        engine.add_event_handler(self.events.ITERATION_STARTED(once=self.iteration), self._begin)
        engine.add_event_handler(self.events.ITERATION_COMPLETED(once=self.iteration), self._end)

    def _begin(self, engine: Any = None) -> None:
        _sync(self.device)
        self._context = warnings.catch_warnings(record=True)
        self._log = self._context.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def _end(self, engine: Any = None) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._context.__exit__(None, None, None)
        self.syncs = [
            f"{Path(w.filename).name}:{w.lineno}: {str(w.message).splitlines()[0][:120]}"
            for w in self._log or []
            # the first message only says that the debug mode itself is a prototype
            if "synchroniz" in str(w.message) and "prototype feature" not in str(w.message)
        ]


class ProfileWindow:
    """Profiles ``count`` iterations with ``torch.profiler`` (CPU, plus CUDA on a GPU).

    Tells a GPU-bound step (device busy for most of the wall time) from one that starves the device
    (gaps between kernels: Python, launches, synchronisations). The profiler slows the host side, so
    the wall time of the window is an upper bound; the device time per iteration is not inflated.

    Args:
        events: ``ignite.engine.Events``.
        device: the training device.
        first: 1-based first iteration of the window.
        count: iterations profiled.
        path: where the table of the most expensive operators is written (None: not written).
    """

    def __init__(self, events: Any, device: torch.device, first: int, count: int, path: Path | None) -> None:
        self.events, self.device, self.first, self.count, self.path = events, device, int(first), int(count), path
        self.summary: dict[str, Any] | None = None
        self._profiler: Any = None
        self._start = 0.0

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(self.events.ITERATION_STARTED(once=self.first), self._begin)
        engine.add_event_handler(self.events.ITERATION_COMPLETED(once=self.first + self.count - 1), self._end)

    def _begin(self, engine: Any = None) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        _sync(self.device)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()
        self._start = time.perf_counter()

    def _end(self, engine: Any = None) -> None:
        _sync(self.device)
        wall = time.perf_counter() - self._start
        self._profiler.__exit__(None, None, None)
        averages = self._profiler.key_averages()
        # kernel time: the device-side entries only (an operator's own entry repeats its kernels' time)
        device_us = sum(float(e.self_device_time_total) for e in averages
                        if e.device_type != torch.autograd.DeviceType.CPU and not getattr(e, "is_user_annotation", False))
        self.summary = {
            "iterations": f"{self.first}..{self.first + self.count - 1}",
            "phase": engine.phase() if engine is not None and hasattr(engine, "phase") else None,
            "wall_ms_per_iteration_profiled": 1e3 * wall / self.count,
            "device_busy_ms_per_iteration": device_us / 1e3 / self.count,
            "host_operator_ms_per_iteration_profiled": float(averages.self_cpu_time_total) / 1e3 / self.count,
            "table": str(self.path) if self.path is not None else None,
        }
        if self.path is not None:
            sort_by = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            try:
                table = averages.table(sort_by=sort_by, row_limit=40)
            except (AttributeError, KeyError):  # older torch names the device column "cuda"
                table = averages.table(sort_by="self_cuda_time_total", row_limit=40)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(f"{self.summary}\n\n{table}")
        self._profiler = None


# ------------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------------


def synthetic_slices(n: int, size: int, num_classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Cardiac-like toy slices: nested discs, one per foreground class, with class intensities and noise.

    Every foreground class is a disc of random centre and radius painted over the larger ones (class 1
    is the largest, like the RV/blood pool around the myocardium and the LV), so most slices contain
    every class, as real pseudo-labels do; the contrastive loss then draws its full set of anchors.

    Args:
        n: number of slices.
        size: height and width.
        num_classes: classes including background.
        generator: CPU random generator.

    Returns:
        images ``[n, 1, size, size]`` float32 in ``[0, 1.2]`` and labels ``[n, size, size]`` uint8.
    """
    k = num_classes - 1
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in (0, 1)
    centre = 0.5 + 0.12 * (torch.rand(n, k, 2, generator=generator) - 0.5)
    # decreasing radii: the largest structure first, the smaller ones inside it
    radius = torch.linspace(0.3, 0.1, k)[None, :] * (0.85 + 0.3 * torch.rand(n, k, generator=generator))
    dy = coords[None, None, :, None] - centre[..., 0, None, None]
    dx = coords[None, None, None, :] - centre[..., 1, None, None]
    inside = (dy**2 + dx**2) < radius[..., None, None] ** 2  # [n, k, H, W]
    # the label is the highest class whose disc covers the pixel
    weights = torch.arange(1, k + 1, dtype=torch.float32)[None, :, None, None]
    labels = (inside.float() * weights).amax(dim=1).to(torch.uint8)
    levels = torch.linspace(0.1, 0.9, num_classes)
    images = levels[labels.long()] + 0.05 * torch.randn(n, size, size, generator=generator)
    return images.clamp(0.0, 1.2).unsqueeze(1), labels


def synthetic_pool(slice_pool_cls: Any, volumes: int, slices: int, size: int, num_classes: int,
                   generator: torch.Generator, labeled: bool, device: torch.device) -> Any:
    """A :class:`~plc_monai.data.slice_pool.SlicePool` of ``volumes`` synthetic volumes of ``slices`` slices."""
    n = volumes * slices
    images, labels = synthetic_slices(n, size, num_classes, generator)
    return slice_pool_cls(
        images=images.to(device),
        labels=labels.to(device) if labeled else None,
        volume_index=(torch.arange(n) // slices).to(device),
        slice_index=(torch.arange(n) % slices).to(device),
        volume_ids=[f"synthetic_{v:03d}" for v in range(volumes)],
    )


def synthetic_volumes(volumes: int, slices: int, size: int, num_classes: int, generator: torch.Generator) -> list[dict]:
    """Validation items ``{"image": [1, H, W, S], "label": [1, H, W, S]}`` on the CPU (as a cached dataset yields them)."""
    items = []
    for v in range(volumes):
        images, labels = synthetic_slices(slices, size, num_classes, generator)
        items.append({
            "image": images[:, 0].permute(1, 2, 0)[None].contiguous(),
            "label": labels.permute(1, 2, 0)[None].float().contiguous(),
            "id": f"synthetic_val_{v:03d}",
        })
    return items


# ------------------------------------------------------------------------------------------------
# the bundle's objects
# ------------------------------------------------------------------------------------------------


class BundleObjects:
    """Reads the bundle's ``train.json`` and instantiates fresh copies of its training objects.

    Args:
        config_parser: ``monai.bundle.ConfigParser``.
        path: the bundle's training config.
        overrides: config ids to override before parsing (e.g. sizes for ``--size ci``).

    Raises:
        SystemExit: when the config file is missing.
    """

    def __init__(self, config_parser: Any, path: Path, overrides: dict[str, Any]) -> None:
        if not path.is_file():
            raise SystemExit(f"train_speed.py: bundle config {path} not found; pass --bundle-config.")
        self.path = path
        self.parser = config_parser()
        self.parser.read_config(str(path))
        for key, value in overrides.items():
            self.parser[key] = value

    def value(self, key: str) -> Any:
        """A parsed value of the config (scalars, lists)."""
        return self.parser.get_parsed_content(key)

    def fresh(self, key: str) -> Any:
        """A new instance of the object at ``key`` (not the cached one)."""
        return self.parser.get_parsed_content(key, lazy=False)


# ------------------------------------------------------------------------------------------------
# (a) the plain-PyTorch yardstick
# ------------------------------------------------------------------------------------------------


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over samples and classes (background included) of ``1 - Dice(softmax(logits), one-hot(labels))``.

    Args:
        logits: ``[B, C, H, W]`` float32.
        labels: ``[B, 1, H, W]`` integer class ids.
        smooth: added to numerator and denominator.

    Returns:
        scalar loss.
    """
    probs = logits.softmax(dim=1)
    onehot = torch.zeros_like(probs).scatter_(1, labels.long(), 1.0)
    dims = tuple(range(2, logits.ndim))
    intersection = (probs * onehot).sum(dims)
    denominator = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2.0 * intersection + smooth) / (denominator + smooth)).mean()


def time_yardstick(network: torch.nn.Module, contrastive: Callable | None, images: torch.Tensor, labels: torch.Tensor,
                   labeled: int, lambda_cont: float, lr: float, amp_dtype: torch.dtype | None, iterations: int,
                   warmup: int, device: torch.device) -> float:
    """ms per iteration of the plain-PyTorch training step (Dice only when ``contrastive`` is ``None``).

    Args:
        network: the model, already on ``device`` in its memory format.
        contrastive: the contrastive loss, or ``None`` for the segmentation-only step (Dice on all ``B``
            slices, like the engine's warm-up step).
        images: ``[B, 1, H, W]`` on ``device``.
        labels: ``[B, 1, H, W]`` long on ``device``.
        labeled: slices of the batch that get the Dice loss in the joint step.
        lambda_cont: weight of the contrastive loss.
        lr: Adam learning rate.
        amp_dtype: autocast dtype, or ``None`` for float32.
        iterations: timed iterations.
        warmup: untimed iterations first.
        device: where it runs.

    Returns:
        wall milliseconds per iteration, with one synchronisation at each end of the timed block.
    """
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    network.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            if contrastive is None:
                # as the engine's warm-up step: Dice on the whole batch of (labeled) slices
                loss = soft_dice_loss(network(images).float(), labels)
            else:
                logits, embedding = network.forward_train(images)
                loss = soft_dice_loss(logits[:labeled].float(), labels[:labeled])
        if contrastive is not None:
            loss = loss + lambda_cont * contrastive(embedding, labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    _sync(device)
    return 1e3 * (time.perf_counter() - start) / iterations


# ------------------------------------------------------------------------------------------------
# (b), (c): the engine
# ------------------------------------------------------------------------------------------------


def build_trainer(mods: dict[str, Any], bundle: BundleObjects, network: torch.nn.Module, labeled: Any, unlabeled: Any,
                  store: Any, device: torch.device, amp: bool, channels_last: bool, warmup_iterations: int,
                  total_iterations: int, epoch_length: int, seed: int, handlers: Sequence | None = None) -> Any:
    """A :class:`SemiSupervisedTrainer` wired as ``train#trainer`` of the bundle, with fresh bundle objects."""
    optimizer = torch.optim.Adam(network.parameters(), lr=float(bundle.value("learning_rate")))
    return mods["SemiSupervisedTrainer"](
        device=device,
        max_epochs=int(math.ceil(total_iterations / epoch_length)),
        epoch_length=epoch_length,
        network=network,
        optimizer=optimizer,
        seg_loss=bundle.fresh("graph_safe_loss" if bundle.value("compile_step") else "loss"),
        contrastive_loss=bundle.fresh("contrastive_loss"),
        labeled=labeled,
        unlabeled=unlabeled,
        pseudo_labels=store,
        warmup_iterations=warmup_iterations,
        batch_size=int(bundle.value("batch_size")),
        labeled_per_batch=int(bundle.value("labeled_per_batch")),
        lambda_cont=float(bundle.value("lambda_cont")),
        pseudo_labels_in_seg_loss=bool(bundle.value("pseudo_labels_in_seg_loss")),
        seg_augmentation=bundle.fresh("train#seg_augmentation"),
        intensity_augmentation=bundle.fresh("train#intensity_augmentation"),
        shared_forward=bool(bundle.value("shared_forward")),
        amp=amp,
        channels_last=channels_last,
        seed=seed,
        log_interval=int(bundle.value("log_interval")),
        compile_step=bool(bundle.value("compile_step")),
        train_handlers=handlers,
    )


def make_evaluator(mods: dict[str, Any], bundle: BundleObjects, network: torch.nn.Module, items: list[dict],
                   device: torch.device, amp: bool, num_classes: int) -> Any:
    """The bundle's ``validate#evaluator`` on in-memory volumes (no ``Invertd``: they have no preprocessing trace)."""
    loader = mods["DataLoader"](items, batch_size=1, shuffle=False, num_workers=0)
    post = mods["Compose"]([
        mods["CopyItemsd"](keys="label", names="reference"),
        mods["AsDiscreted"](keys="pred", argmax=True),
        mods["AsDiscreted"](keys=["pred", "reference"], to_onehot=num_classes),
    ])
    return mods["SupervisedEvaluator"](
        device=device,
        val_data_loader=loader,
        network=network,
        inferer=bundle.fresh("validate#inferer"),
        postprocessing=post,
        key_val_metric=bundle.fresh("validate#key_metric"),
        additional_metrics=bundle.fresh("validate#additional_metrics"),
        amp=amp,
    )


def _new_network(bundle: BundleObjects, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return bundle.fresh("network_def").to(device)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["paper", "ci"], default=None,
                        help="paper: the bundle's B=20, 192x192, widths 16..128 (default on CUDA); ci: reduced (default on CPU)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed iterations per measurement (CUDA 100, CPU 50)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed iterations before each measurement (CUDA 20, CPU 5)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="autocast (bf16 where supported); default on for CUDA, off for CPU")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels-last memory format (CUDA only, as in the engine); default on for CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--spatial", type=int, default=None, help="override the slice size (H = W)")
    parser.add_argument("--batch", type=int, default=None, help="override the batch size (labeled half = batch // 2)")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="override the encoder widths")
    parser.add_argument("--labeled-volumes", type=int, default=None,
                        help="synthetic labeled volumes (default: the bundle split's)")
    parser.add_argument("--unlabeled-volumes", type=int, default=None,
                        help="synthetic unlabeled volumes, refreshed once (default: the split's on CUDA, at most 8 on CPU)")
    parser.add_argument("--val-volumes", type=int, default=None,
                        help="synthetic validation volumes (default: the split's)")
    parser.add_argument("--slices", type=int, default=10, help="slices per synthetic volume (ACDC: about 10)")
    parser.add_argument("--loss-repeats", type=int, default=None,
                        help="timed calls of the vectorised loss (x2; CUDA 20, CPU 5)")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed calls of the loop transcription")
    parser.add_argument("--full", action="store_true",
                        help="also run the whole schedule through the engine (GPU only, sensibly)")
    parser.add_argument("--schedule-warmup", type=int, default=None,
                        help="warm-up iterations of the schedule (bundle: 5000)")
    parser.add_argument("--schedule-rounds", type=int, default=None, help="joint rounds (bundle: 3)")
    parser.add_argument("--schedule-interval", type=int, default=None,
                        help="iterations per round = refresh interval (bundle: 5000)")
    parser.add_argument("--val-interval", type=int, default=None, help="iterations between validations (bundle: 50)")
    parser.add_argument("--bundle-config", type=Path, default=DEFAULT_BUNDLE_CONFIG, help="the bundle's train.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="profile 10 joint iterations of the engine run (and, with --full, 10 warm-up and 10 "
                             "joint iterations of the schedule) with torch.profiler; tables are written here")
    parser.add_argument("--compile-step", action="store_true",
                        help="the engine with the bundle's compile_step on (torch.compile, CUDA graphs on CUDA); "
                             "the yardstick (a) stays eager")
    parser.add_argument("--handler-times", action="store_true",
                        help="with --full: host seconds of every Ignite handler (ignite's HandlersTimeProfiler)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    for name in ("iterations", "threads", "spatial", "batch", "labeled_volumes", "unlabeled_volumes", "val_volumes",
                 "loss_repeats", "schedule_interval", "val_interval"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("warmup", "schedule_warmup", "schedule_rounds"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.slices < 1 or args.loop_repeats < 1:
        parser.error("--slices and --loop-repeats must be >= 1")
    if args.batch is not None and args.batch < 2:
        parser.error(f"--batch must be >= 2 (a labeled and an unlabeled half), got {args.batch}")
    return args


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the device-dependent defaults."""
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available to torch {torch.__version__} here.")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    cuda = device.type == "cuda"
    args.size = args.size or ("paper" if cuda else "ci")
    args.iterations = args.iterations or (100 if cuda else 50)
    args.warmup = args.warmup if args.warmup is not None else (20 if cuda else 5)
    args.amp = cuda if args.amp is None else args.amp
    requested_cl = cuda if args.channels_last is None else args.channels_last
    if requested_cl and not cuda:
        print("note: --channels-last applies on CUDA only (the engine ignores it on CPU); running contiguous.")
    args.channels_last = requested_cl and cuda
    args.loss_repeats = args.loss_repeats or (20 if cuda else 5)
    return args


def _machine(loss_speed: ModuleType, device: torch.device) -> dict[str, Any]:
    info = loss_speed.machine_info([device])
    import ignite
    import monai

    info.update({"monai": monai.__version__, "ignite": ignite.__version__, "load_average": _load(),
                 "cpu_threads_used": torch.get_num_threads()})
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _projection(schedule: dict[str, int], engine_seg_ms: float, engine_joint_ms: float, refresh_s_per_volume: float,
                val_s_per_volume: float, unlabeled_volumes: int, val_volumes: int) -> dict[str, Any]:
    """Wall seconds of a schedule from per-iteration, per-refresh and per-validation costs."""
    total_iterations = schedule["warmup"] + schedule["rounds"] * schedule["interval"]
    validations = total_iterations // schedule["val_interval"]
    parts = {
        "warmup_iterations_s": schedule["warmup"] * engine_seg_ms / 1e3,
        "joint_iterations_s": schedule["rounds"] * schedule["interval"] * engine_joint_ms / 1e3,
        "refreshes_s": schedule["rounds"] * unlabeled_volumes * refresh_s_per_volume,
        "validations_s": validations * val_volumes * val_s_per_volume,
    }
    total = sum(parts.values())
    return {
        "schedule": dict(schedule),
        "total_iterations": total_iterations,
        "validations": validations,
        "refreshes": schedule["rounds"],
        "unlabeled_volumes": unlabeled_volumes,
        "validation_volumes": val_volumes,
        "seconds": parts,
        "total_s": total,
        "total_min": total / 60.0,
    }


def run_full(mods: dict[str, Any], bundle: BundleObjects, pools: dict[str, Any], val_items: list[dict],
             device: torch.device, args: argparse.Namespace, schedule: dict[str, int], num_classes: int,
             record: dict[str, Any]) -> dict[str, Any]:
    """Run ``schedule`` through the engine with the bundle's training handlers; wall time and its parts."""
    if device.type != "cuda" and schedule["warmup"] + schedule["rounds"] * schedule["interval"] > 1000:
        print("warning: --full runs the whole schedule; on a CPU this takes hours.")
    events = mods["Events"]
    network = _new_network(bundle, device, args.seed)
    store = mods["PseudoLabelStore"](len(pools["unlabeled"]), pools["unlabeled"].spatial_size, device=device,
                                     volume_index=pools["unlabeled"].volume_index)
    evaluator = make_evaluator(mods, bundle, network, val_items, device, args.amp and device.type == "cuda", num_classes)
    total = schedule["warmup"] + schedule["rounds"] * schedule["interval"]
    # seconds spent in validation (best-model saving included) and in resume checkpoints, per phase
    periodic: dict[str, float] = {}

    def timed_save(save: Callable[..., None]) -> Callable[..., None]:
        def wrapper(engine: Any = None) -> None:
            _sync(device)
            begin = time.perf_counter()
            save(engine)
            _sync(device)
            key = f"checkpoint_s_{engine.phase() if engine is not None else 'end'}"
            periodic[key] = periodic.get(key, 0.0) + time.perf_counter() - begin
        return wrapper

    with tempfile.TemporaryDirectory(prefix="train_speed_full_") as tmp:
        handlers = [
            mods["ResumeCheckpoint"](tmp, {"network": network}, save_interval=int(bundle.value("save_interval")),
                                     extra_iterations=[schedule["warmup"]], resume=False),
            mods["PseudoLabelRefresh"](store, pools["unlabeled"].images, network, interval=schedule["interval"],
                                       start_iteration=schedule["warmup"], num_refreshes=schedule["rounds"],
                                       amp=args.amp, seed=args.seed),
            mods["ValidationHandler"](validator=evaluator, interval=schedule["val_interval"], epoch_level=False,
                                      exec_at_start=False),
            mods["BestModelPerPhase"](evaluator, network, tmp, metric_name="val_mean_dice"),
            mods["TrainingProgress"](log_interval=int(bundle.value("log_interval")), tensorboard_dir=None),
            mods["DegenerateBatchMonitor"](num_classes, interval=int(bundle.value("log_interval"))),
        ]
        handlers[0].save = timed_save(handlers[0].save)  # before build_trainer attaches it
        trainer = build_trainer(mods, bundle, network, pools["labeled"], pools["unlabeled"], store, device, args.amp,
                                args.channels_last, schedule["warmup"], total, schedule["val_interval"], args.seed,
                                handlers)
        # the ResumeCheckpoint saves the optimizer too, as in the bundle
        handlers[0].save_dict["optimizer"] = trainer.optimizer
        marks: dict[str, float] = {}
        val_seconds = [0.0]

        def mark(name: str) -> Callable[[Any], None]:
            def handler(engine: Any = None) -> None:
                _sync(device)
                marks[name] = time.perf_counter()
            return handler

        def val_start(engine: Any) -> None:
            _sync(device)
            marks["val_start"] = time.perf_counter()

        def val_end(engine: Any) -> None:
            _sync(device)
            spent = time.perf_counter() - marks["val_start"]
            val_seconds[0] += spent
            key = f"validation_s_{trainer.phase()}"
            periodic[key] = periodic.get(key, 0.0) + spent

        trainer.add_event_handler(events.STARTED, mark("start"))
        if schedule["warmup"] > 0:
            trainer.add_event_handler(events.ITERATION_COMPLETED(once=schedule["warmup"]), mark("warmup_end"))
        trainer.add_event_handler(events.COMPLETED, mark("end"))
        every = max(1, total // 20)
        trainer.add_event_handler(
            events.ITERATION_COMPLETED(every=every),
            lambda e: print(f"  full schedule: iteration {e.state.iteration}/{total} ({e.phase()}), "
                            f"{time.perf_counter() - marks['start']:.0f} s", flush=True),
        )
        evaluator.add_event_handler(events.STARTED, val_start)
        evaluator.add_event_handler(events.COMPLETED, val_end)
        windows: list[ProfileWindow] = []
        if args.profile_dir is not None:
            # the end of the warm-up and the end of the last joint round (away from refreshes)
            for name, last in (("warmup", schedule["warmup"]), ("joint", total)):
                if last - PROFILE_ITERATIONS >= 1 and (name == "warmup" or total > schedule["warmup"] + PROFILE_ITERATIONS):
                    windows.append(ProfileWindow(events, device, last - PROFILE_ITERATIONS, PROFILE_ITERATIONS - 1,
                                                 args.profile_dir / f"profile_schedule_{name}.txt"))
                    windows[-1].attach(trainer)
        profiler = HandlerTimes(trainer) if args.handler_times else None  # last: it wraps what is attached
        with _Section(device, record, "full_schedule") as section:
            trainer.run()
    refresh_s = sum(r["duration_s"] for r in handlers[1].history)
    warmup_end = marks.get("warmup_end", marks["start"])
    return {
        "wall_s": section.seconds,
        "wall_min": section.seconds / 60.0,
        "iterations": int(trainer.state.iteration),
        "warmup_phase_s": warmup_end - marks["start"],
        "joint_phase_s": marks["end"] - warmup_end,
        "validation_s": val_seconds[0],
        "periodic_s_by_phase": periodic,
        "validations": int(trainer.state.iteration) // schedule["val_interval"],
        "refresh_s": refresh_s,
        "refreshes": len(handlers[1].history),
        "best_val_mean_dice": {k: v["metric"] for k, v in handlers[3].best.items()},
        "handlers": "ResumeCheckpoint (temp dir), PseudoLabelRefresh, ValidationHandler, BestModelPerPhase, "
                    "TrainingProgress (no TensorBoard), DegenerateBatchMonitor",
        "profiles": [w.summary for w in windows],
        "handler_us_per_iteration": None if profiler is None else profiler.costs(int(trainer.state.iteration)),
    }


class HandlerTimes:
    """Host time of every Ignite handler of an engine, per (handler, event), without synchronising the device.

    Wraps each handler registered when it is built. A handler registered with an event filter (``every``,
    ``once``, ``event_filter``) is timed with its filter, so a handler that fires every 50 iterations
    shows its filter's cost on the other 49. Ignite's own wrappers are named after the handler they wrap.

    Args:
        engine: an Ignite engine with its handlers attached.
    """

    def __init__(self, engine: Any) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        for event, entries in engine._event_handlers.items():
            for position, (func, args, kwargs) in enumerate(entries):
                key = f"{self._name(func)} @ {getattr(event, 'name', event)}"
                entries[position] = (self._timed(func, key), args, kwargs)

    @staticmethod
    def _name(func: Callable) -> str:
        parent = getattr(func, "_parent", None)
        inner = parent() if parent is not None else func
        owner = getattr(inner, "__self__", None)
        if owner is not None:
            return f"{type(owner).__name__}.{inner.__name__}"
        return getattr(inner, "__qualname__", type(inner).__name__)

    def _timed(self, func: Callable, key: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
                self.calls[key] = self.calls.get(key, 0) + 1
        return timed

    def costs(self, iterations: int) -> dict[str, dict[str, float]]:
        """``{"<handler> @ <event>": {"us_per_iteration", "total_s", "calls"}}``, largest first."""
        rows = {key: {"us_per_iteration": 1e6 * total / max(1, iterations), "total_s": total, "calls": self.calls[key]}
                for key, total in self.seconds.items()}
        return dict(sorted(rows.items(), key=lambda item: -item[1]["us_per_iteration"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print a table; return (and with ``--out`` write) the results.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        the results, as written to ``--out``.

    Raises:
        SystemExit: on bad arguments, a missing package or a missing bundle config.
    """
    args = _resolve(parse_args(argv))
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__} on {where} ({device}), python {platform.python_version()}")
    mods = _import_project()
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, argv, device, mods)
    finally:
        torch.set_num_threads(previous_threads)  # the thread count is process-wide (matters when called from tests)


def _run(args: argparse.Namespace, argv: Sequence[str] | None, device: torch.device, mods: dict[str, Any]) -> dict[str, Any]:
    loss_speed = mods["loss_speed"]
    load_at_start = _load()
    # every part runs under the malloc setting the process was started with (GLIBC_TUNABLES)
    cpu_allocator = loss_speed.malloc_setting() if device.type == "cpu" else "not used (CUDA)"

    # ---- problem size, from the bundle (paper) or reduced (ci), plus overrides
    probe = BundleObjects(mods["ConfigParser"], args.bundle_config, {})
    num_classes = int(probe.value("num_classes"))
    embedding_dim = int(probe.value("embedding_dim"))
    if args.size == "paper":
        batch, labeled_per_batch = int(probe.value("batch_size")), int(probe.value("labeled_per_batch"))
        spatial, channels = int(probe.value("crop_size")), [int(c) for c in probe.value("channels")]
    else:
        batch, labeled_per_batch = CI_SIZE["batch_size"], CI_SIZE["labeled_per_batch"]
        spatial, channels = CI_SIZE["spatial"], list(CI_SIZE["channels"])
    if args.batch is not None:
        batch, labeled_per_batch = args.batch, args.batch // 2
    spatial = args.spatial or spatial
    channels = args.channels or channels
    if spatial % 2 ** (len(channels) - 1) != 0:
        raise SystemExit(f"--spatial {spatial} must be divisible by 2**{len(channels) - 1} for widths {channels}.")
    overrides = {"batch_size": batch, "labeled_per_batch": labeled_per_batch, "crop_size": spatial, "channels": channels,
                 "compile_step": args.compile_step}
    bundle = BundleObjects(mods["ConfigParser"], args.bundle_config, overrides)
    split = mods["load_paper_split"](bundle.value("dataset_name"), bundle.value("setting"), bundle.value("combo"))
    cuda = device.type == "cuda"
    labeled_volumes = args.labeled_volumes or len(split.labeled)
    unlabeled_volumes = args.unlabeled_volumes or (len(split.unlabeled) if cuda else min(8, len(split.unlabeled)))
    val_volumes = args.val_volumes or len(split.validation)
    schedule = {
        "warmup": args.schedule_warmup if args.schedule_warmup is not None else int(bundle.value("warmup_iterations")),
        "rounds": args.schedule_rounds if args.schedule_rounds is not None else int(bundle.value("num_rounds")),
        "interval": args.schedule_interval or int(bundle.value("pseudo_label_interval")),
        "val_interval": args.val_interval or int(bundle.value("val_interval")),
    }
    lambda_cont, lr = float(bundle.value("lambda_cont")), float(bundle.value("learning_rate"))
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.bfloat16 if not cuda or torch.cuda.is_bf16_supported() else torch.float16
    config = {
        "size": args.size, "device": str(device), "amp": args.amp, "compile_step": args.compile_step,
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "channels_last": args.channels_last, "batch_size": batch, "labeled_per_batch": labeled_per_batch,
        "spatial": [spatial, spatial], "channels": channels, "num_classes": num_classes,
        "embedding_dim": embedding_dim, "lambda_cont": lambda_cont, "iterations": args.iterations,
        "warmup": args.warmup, "threads": torch.get_num_threads(), "labeled_volumes": labeled_volumes,
        "unlabeled_volumes": unlabeled_volumes, "validation_volumes": val_volumes, "slices_per_volume": args.slices,
        "bundle_config": str(args.bundle_config), "split": split.source,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cpu_allocator": cpu_allocator,
    }
    print(f"size {args.size}: B={batch} ({labeled_per_batch} labeled), {spatial}x{spatial}, widths {channels}, "
          f"C={num_classes}, D={embedding_dim}; {config['amp_dtype']}{' + channels_last' if args.channels_last else ''}; "
          f"{args.iterations} timed iterations after {args.warmup}")

    gen = torch.Generator().manual_seed(args.seed)
    pools = {
        "labeled": synthetic_pool(mods["SlicePool"], labeled_volumes, args.slices, spatial, num_classes, gen, True, device),
        "unlabeled": synthetic_pool(
            mods["SlicePool"], unlabeled_volumes, args.slices, spatial, num_classes, gen, False, device
        ),
    }
    val_items = synthetic_volumes(val_volumes, args.slices, spatial, num_classes, gen)
    memory: dict[str, Any] = {}
    results: dict[str, Any] = {}

    # ---- (a) the plain-PyTorch yardstick, seg-only and joint
    images, labels = synthetic_slices(batch, spatial, num_classes, gen)
    images = images.to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = labels[:, None].long().to(device)
    step_ms: dict[str, float] = {}
    for name, with_cont in (("a_yardstick_seg", False), ("a_yardstick", True)):
        network = _new_network(bundle, device, args.seed)
        if args.channels_last:
            network = network.to(memory_format=torch.channels_last)
        contrastive = bundle.fresh("contrastive_loss") if with_cont else None
        with _Section(device, memory, name):
            step_ms[name] = time_yardstick(network, contrastive, images, labels, labeled_per_batch, lambda_cont, lr,
                                           amp_dtype, args.iterations, args.warmup, device)
        del network
    print("  yardstick: " + ", ".join(f"{k} {v:.1f} ms" for k, v in step_ms.items()))

    # ---- (b), (c): one engine run, warm-up phase then joint phase
    block = args.warmup + args.iterations
    network = _new_network(bundle, device, args.seed)
    store = mods["PseudoLabelStore"](len(pools["unlabeled"]), pools["unlabeled"].spatial_size, device=device,
                                     volume_index=pools["unlabeled"].volume_index)
    # pseudo-labels with every class, as a trained network's would be (an untrained one predicts one class)
    store.update(synthetic_slices(len(store), spatial, num_classes, gen)[1].to(device))
    # one more joint iteration after the timed blocks, in which the CUDA syncs are listed (then, optionally,
    # PROFILE_ITERATIONS profiled ones)
    total = 2 * block + 1 + (PROFILE_ITERATIONS if args.profile_dir is not None else 0)
    trainer = build_trainer(mods, bundle, network, pools["labeled"], pools["unlabeled"], store, device, args.amp,
                            args.channels_last, warmup_iterations=block, total_iterations=total,
                            epoch_length=total, seed=args.seed)
    clocks = {
        "b_engine_seg": IterationClock(mods["Events"], device, args.warmup + 1, args.iterations),
        "c_engine_joint": IterationClock(mods["Events"], device, block + args.warmup + 1, args.iterations),
    }
    for clock in clocks.values():
        clock.attach(trainer)
    probe_syncs = SyncProbe(mods["Events"], device, 2 * block + 1)
    probe_syncs.attach(trainer)
    profiles: list[ProfileWindow] = []
    if args.profile_dir is not None:
        profiles.append(ProfileWindow(mods["Events"], device, 2 * block + 2, PROFILE_ITERATIONS,
                                      args.profile_dir / "profile_engine_joint.txt"))
        profiles[-1].attach(trainer)
    phases: dict[int, str] = {}
    trainer.add_event_handler(mods["Events"].ITERATION_COMPLETED, lambda e: phases.setdefault(e.state.iteration, e.phase()))
    with _Section(device, memory, "engine"):
        trainer.run()
    if phases.get(args.warmup + 1) != "warmup" or phases.get(2 * block) != "joint":
        raise RuntimeError(f"unexpected phases in the timing run: {phases.get(args.warmup + 1)}, {phases.get(2 * block)}.")
    for name, clock in clocks.items():
        step_ms[name] = clock.ms_per_iteration
    results["step_ms"] = step_ms
    results["joint_iteration_syncs"] = probe_syncs.syncs  # None on CPU
    results["profiles"] = [p.summary for p in profiles]
    a = step_ms["a_yardstick"]
    results["ratios"] = {
        "b_over_a": step_ms["b_engine_seg"] / a,
        "c_over_a": step_ms["c_engine_joint"] / a,
        "b_over_a_seg": step_ms["b_engine_seg"] / step_ms["a_yardstick_seg"],
    }
    print(f"  engine done: b={step_ms['b_engine_seg']:.1f} ms, c={step_ms['c_engine_joint']:.1f} ms")

    # ---- pseudo-label refresh of the unlabeled pool (one untimed, then timed)
    refresh = mods["PseudoLabelRefresh"](store, pools["unlabeled"].images, network, interval=1, amp=args.amp, seed=args.seed)
    refresh.refresh()
    with _Section(device, memory, "refresh") as section:
        refresh.refresh()
    results["refresh"] = {
        "volumes": unlabeled_volumes, "slices": len(store), "seconds": section.seconds,
        "ms_per_volume": 1e3 * section.seconds / unlabeled_volumes,
    }

    # ---- validation: SupervisedEvaluator + SliceInferer + the bundle's metrics (one untimed run, then timed)
    evaluator = make_evaluator(mods, bundle, network, val_items, device, args.amp and cuda, num_classes)
    evaluator.run()
    with _Section(device, memory, "validation") as section:
        evaluator.run()
    results["validation"] = {
        "method": "monai SupervisedEvaluator + the bundle's SliceInferer, MeanDice and StructureDice over in-memory "
                  "volumes (no Invertd)",
        "volumes": val_volumes, "seconds_per_run": section.seconds,
        "ms_per_volume": 1e3 * section.seconds / val_volumes,
        "val_mean_dice": float(evaluator.state.metrics.get("val_mean_dice", float("nan"))),
    }
    del trainer, evaluator, refresh

    # ---- the loss alone against its loop transcription (benchmarks/loss_speed.py)
    loss_args = argparse.Namespace(batch=batch, dim=embedding_dim, size=spatial, classes=num_classes,
                                   num_samples=int(bundle.value("num_samples")), seed=args.seed,
                                   repeats=args.loss_repeats, warmup=2, loop_repeats=args.loop_repeats)
    with _Section(device, memory, "loss"):
        results["loss"] = loss_speed.run_case(loss_args, device, str(bundle.value("matching")))

    # ---- projection of the schedule, and the measured one
    results["projection"] = _projection(
        schedule, step_ms["b_engine_seg"], step_ms["c_engine_joint"], results["refresh"]["seconds"] / unlabeled_volumes,
        results["validation"]["seconds_per_run"] / val_volumes, len(split.unlabeled), len(split.validation),
    )
    results["full"] = None
    header = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/train_speed.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": config,
        "machine": {**_machine(loss_speed, device), "load_average_at_start": load_at_start},
    }

    def finish() -> dict[str, Any]:
        memory["peak_rss_mib"] = _peak_rss_mib()
        if cuda:
            memory["peak_gpu_mib_training"] = max(
                memory["peak_gpu_mib"][k] for k in ("engine", "a_yardstick", "a_yardstick_seg", "full_schedule")
                if k in memory["peak_gpu_mib"]
            )
        results["memory"] = memory
        results["targets"] = _targets(results, args, cuda)
        payload = {**header, **results}
        _print_table(payload)
        if args.out is not None:
            loss_speed.write_json_atomic(args.out, payload)
            print(f"wrote {args.out}")
        return payload

    payload = finish()
    if args.full:
        # the short measurements are already written: a run cut off during the schedule keeps them
        print(f"running the full schedule ({schedule})...", flush=True)
        results["full"] = run_full(mods, bundle, pools, val_items, device, args, schedule, num_classes, memory)
        payload = finish()
    return payload


def _targets(results: dict[str, Any], args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """The performance issue's targets; judged only on CUDA at paper size."""
    applicable = cuda and args.size == "paper"
    out: dict[str, Any] = {
        "applicable": applicable,
        "c_over_a_max": TARGET_JOINT_RATIO,
        "full_schedule_s_max": TARGET_FULL_SCHEDULE_S,
        "peak_gpu_gib_max": TARGET_PEAK_GIB,
    }
    if applicable:
        out["c_over_a_ok"] = results["ratios"]["c_over_a"] <= TARGET_JOINT_RATIO
        out["projected_schedule_ok"] = results["projection"]["total_s"] < TARGET_FULL_SCHEDULE_S
        if results["full"] is not None:
            out["measured_schedule_ok"] = results["full"]["wall_s"] < TARGET_FULL_SCHEDULE_S
        out["peak_gpu_ok"] = results["memory"]["peak_gpu_mib_training"] / 1024.0 < TARGET_PEAK_GIB
    return out


def _print_table(p: dict[str, Any]) -> None:
    s, r = p["step_ms"], p["ratios"]
    rows = [
        ("(a) yardstick, plain PyTorch, Dice + lambda*contrastive", f"{s['a_yardstick']:.1f} ms/it", ""),
        ("    yardstick, Dice only", f"{s['a_yardstick_seg']:.1f} ms/it", ""),
        ("(b) engine, warm-up phase (Dice)", f"{s['b_engine_seg']:.1f} ms/it", f"(b)/(a) = {r['b_over_a']:.2f}"),
        ("(c) engine, joint phase", f"{s['c_engine_joint']:.1f} ms/it", f"(c)/(a) = {r['c_over_a']:.2f}"),
        ("contrastive loss fwd+bwd, vectorised (median)", f"{p['loss']['vectorised_ms_median']:.1f} ms", ""),
        ("contrastive loss fwd+bwd, loop transcription", f"{p['loss']['loop_ms_median']:.1f} ms",
         f"{p['loss']['speedup_median']:.1f}x"),
        (f"pseudo-label refresh, {p['refresh']['slices']} slices", f"{p['refresh']['ms_per_volume']:.1f} ms/volume",
         f"{p['refresh']['seconds']:.2f} s"),
        (f"validation run, {p['validation']['volumes']} volume(s)", f"{p['validation']['ms_per_volume']:.1f} ms/volume",
         f"{p['validation']['seconds_per_run']:.2f} s/run"),
        ("projected schedule {warmup} + {rounds}x{interval} it, val every {val_interval}".format(
            **p["projection"]["schedule"]),
         f"{p['projection']['total_min']:.1f} min", ""),
    ]
    if p["full"] is not None:
        rows.append(("measured schedule (--full)", f"{p['full']['wall_min']:.1f} min", f"{p['full']['iterations']} it"))
    mem = p["memory"]
    if "peak_gpu_mib_training" in mem:
        rows.append(("peak GPU memory, training", f"{mem['peak_gpu_mib_training']:.0f} MiB", ""))
    rows.append(("peak RSS of the process", f"{mem['peak_rss_mib']:.0f} MiB", ""))
    width = max(len(row[0]) for row in rows)
    c = p["config"]
    print(f"\n{c['size']} size, {c['device']} ({p['machine'].get('gpu', p['machine']['processor'])}), {c['amp_dtype']}"
          f"{' + channels_last' if c['channels_last'] else ''}, torch {p['machine']['torch']}, "
          f"load {p['machine']['load_average_at_start']} -> {p['machine']['load_average']}")
    for name, value, extra in rows:
        print(f"{name:<{width}}  {value:>16}  {extra}")
    if p["joint_iteration_syncs"] is not None:
        print(f"host-device syncs in one joint iteration: {len(p['joint_iteration_syncs'])}")
        for line in p["joint_iteration_syncs"]:
            print(f"  {line}")
    if p["targets"]["applicable"]:
        print("targets: " + ", ".join(f"{k}={v}" for k, v in p["targets"].items() if k.endswith("_ok")))


if __name__ == "__main__":
    main()
