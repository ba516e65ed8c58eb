"""Start-up checks of a training configuration, and a record of what a run used.

A bundle run reads and preprocesses its data, builds the network and only then meets a bad value:
a crop size the UNet cannot halve, a temperature of 0 or an unknown matching scheme would surface
after data loading or, worse, at the first joint iteration. :func:`check_training_config` checks
those values at the bundle's ``initialize`` step and raises one :class:`ConfigValueError` listing
every problem, each with its config id, its value and what is expected.

:func:`write_run_info` writes ``<output_dir>/run_info.json`` (the seed, the split choice and the
software versions), so a run's output folder says how to repeat it; the split's ids are in
``split.json`` next to it.

Both are called from the ``initialize`` list of ``bundles/*/configs/train.json``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text

__all__ = [
    "ConfigValueError",
    "MATCHING_CHOICES",
    "SPLIT_CHOICES",
    "DATASET_CHOICES",
    "check_training_config",
    "write_run_info",
]

MATCHING_CHOICES = ("intra", "inter")
"""Values of the ``matching`` config id (see :class:`plc_monai.losses.PixelContrastiveLoss`)."""

SPLIT_CHOICES = ("paper", "random")
"""Values of the ``split`` config id besides the path of a split ``.json`` file."""

DATASET_CHOICES = ("acdc", "prostate", "mmwhs", "folder")
"""Datasets :func:`plc_monai.data.readers.read_datalist` reads."""

_SETTING = re.compile(r"^tr([1-9]\d*)$")
_LOGGER = logging.getLogger(__name__)


class ConfigValueError(ValueError):
    """One or more config values are invalid; the message names each config id, value and expectation."""


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _int_problem(name: str, value: Any, minimum: int) -> str | None:
    if not _is_int(value) or value < minimum:
        return f"'{name}' = {value!r}: expected an integer >= {minimum}"
    return None


def _crop_problems(crop_size: Any, channels: Any) -> list[str]:
    """Crop size and UNet depth: every in-plane size must be divisible by ``2 ** (len(channels) - 1)``."""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or len(channels) < 2:
        return [f"'channels' = {channels!r}: expected a list of at least 2 positive integers (encoder widths)"]
    if not all(_is_int(c) and c > 0 for c in channels):
        return [f"'channels' = {list(channels)!r}: expected positive integers (encoder widths)"]
    sizes = [crop_size] if not isinstance(crop_size, Sequence) or isinstance(crop_size, (str, bytes)) else list(crop_size)
    if not sizes or not all(_is_int(s) and s > 0 for s in sizes):
        return [f"'crop_size' = {crop_size!r}: expected a positive integer (or a list of them)"]
    depth = len(channels) - 1
    divisor = 2**depth
    bad = [s for s in sizes if s % divisor]
    if not bad:
        return []
    lower = max(divisor, bad[0] - bad[0] % divisor)
    return [
        f"'crop_size' = {crop_size!r}: must be divisible by {divisor} = 2**{depth}, since 'channels' = "
        f"{list(channels)} gives {depth} poolings; use e.g. {lower} or {lower + divisor}, or fewer levels"
    ]


def _split_problems(split: Any, setting: Any, combo: Any, dataset: str) -> list[str]:
    """The split choice exists: paper setting/combo of the dataset, a ``trN`` setting, or a readable split file."""
    if not isinstance(split, str):
        return [f"'split' = {split!r}: expected 'paper', 'random' or the path of a split .json file"]
    if split == "paper":
        from plc_monai.data.splits import PAPER_SPLIT_DATASETS, list_paper_settings

        if dataset not in PAPER_SPLIT_DATASETS:
            return [f"'split' = 'paper': the paper's splits exist for {list(PAPER_SPLIT_DATASETS)}, "
                    f"not dataset {dataset!r}; use 'random' or a split file"]
        settings = list_paper_settings(dataset)
        if setting not in settings:
            return [f"'setting' = {setting!r}: not a paper setting of {dataset}; expected one of {list(settings)}"]
        if combo not in settings[setting]:
            return [f"'combo' = {combo!r}: not a combination of {dataset} {setting}; expected one of {settings[setting]}"]
        return []
    if split == "random":
        if not isinstance(setting, str) or not _SETTING.match(setting):
            return [f"'setting' = {setting!r}: a random split needs 'trN' (N >= 1 labeled volumes), e.g. 'tr1', 'tr8'"]
        return []
    if split.endswith(".json"):
        from plc_monai.data.splits import load_split

        try:
            load_split(split)
        except (FileNotFoundError, ValueError) as err:
            return [f"'split' = {split!r}: {err}"]
        return []
    return [f"'split' = {split!r}: expected one of {list(SPLIT_CHOICES)} or the path of a split .json file"]


def check_training_config(
    crop_size: int | Sequence[int],
    channels: Sequence[int],
    num_samples: int | None,
    temperature: float,
    matching: str,
    lambda_cont: float,
    warmup_iterations: int,
    num_rounds: int,
    pseudo_label_interval: int,
    val_interval: int,
    batch_size: int,
    labeled_per_batch: int,
    setting: str,
    combo: str,
    split: str,
    dataset: str,
    switches: Mapping[str, Any] | None = None,
) -> None:
    """Check a training bundle's values before any data is read; raise one error listing every problem.

    The checks: ``crop_size`` divisible by ``2 ** (len(channels) - 1)`` (the UNet halves the image
    once per level below the first); ``num_samples`` ``None`` or >= 1; ``temperature`` > 0 and
    finite; ``matching`` in :data:`MATCHING_CHOICES`; ``lambda_cont`` >= 0; iteration counts
    non-negative and intervals >= 1; ``1 <= labeled_per_batch <= batch_size``; an even
    ``batch_size`` when ``matching="inter"`` pairs slice ``b`` with ``b + B/2`` in the joint phase;
    ``dataset`` known; and the split choice exists (a paper ``setting``/``combo`` of the dataset, a
    ``trN`` setting for random splits, or a readable split file). Ids of a split file that are
    absent from the dataset folder are reported when the folder is read, also before training.

    A total iteration count that is not a multiple of ``val_interval`` only logs a warning: the
    trainer runs ``ceil(total / val_interval) * val_interval`` iterations.

    Args:
        crop_size: in-plane crop size (config id ``crop_size``), an int or a list of ints.
        channels: UNet encoder widths (``channels``).
        num_samples: anchors per class and image of the contrastive loss (``num_samples``).
        temperature: contrastive temperature (``temperature``).
        matching: ``"intra"`` or ``"inter"`` (``matching``).
        lambda_cont: weight of the contrastive loss (``lambda_cont``).
        warmup_iterations: iterations of step 1 (``warmup_iterations``).
        num_rounds: pseudo-label rounds of step 2 (``num_rounds``).
        pseudo_label_interval: iterations per round (``pseudo_label_interval``).
        val_interval: iterations between validations (``val_interval``).
        batch_size: slices per iteration (``batch_size``).
        labeled_per_batch: labeled slices per joint iteration (``labeled_per_batch``).
        setting: labeled-set setting, e.g. ``"tr1"`` (``setting``).
        combo: paper combination, e.g. ``"c1"`` (``combo``).
        split: ``"paper"``, ``"random"`` or a split file path (``split``).
        dataset: dataset name (``dataset_name``).
        switches: on/off config values by id (``n4``, ``resume``, ``amp``, ...), each of which must be
            a real boolean: on the command line ``--n4 false`` arrives as the string ``'false'``,
            which Python reads as true, so it is rejected with a hint to write ``False``.

    Raises:
        ConfigValueError: (a ``ValueError``) naming every invalid config id, its value and what is expected.
    """
    problems: list[str] = []
    dataset_name = str(dataset).lower() if isinstance(dataset, str) else dataset
    if dataset_name not in DATASET_CHOICES:
        problems.append(f"'dataset_name' = {dataset!r}: expected one of {list(DATASET_CHOICES)}")
    problems += _crop_problems(crop_size, channels)
    if num_samples is not None and (not _is_int(num_samples) or num_samples < 1):
        problems.append(f"'num_samples' = {num_samples!r}: expected an integer >= 1 (anchors per class), or null for all pixels")
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature <= 0:
        problems.append(f"'temperature' = {temperature!r}: expected a finite number > 0 (the paper uses 0.1)")
    if matching not in MATCHING_CHOICES:
        problems.append(f"'matching' = {matching!r}: unknown matching scheme; expected one of {list(MATCHING_CHOICES)}")
    if not _is_number(lambda_cont) or not math.isfinite(lambda_cont) or lambda_cont < 0:
        problems.append(f"'lambda_cont' = {lambda_cont!r}: expected a finite number >= 0 (0 disables the contrastive loss)")
    for name, value, minimum in (
        ("warmup_iterations", warmup_iterations, 0),
        ("num_rounds", num_rounds, 0),
        ("pseudo_label_interval", pseudo_label_interval, 1),
        ("val_interval", val_interval, 1),
        ("batch_size", batch_size, 1),
    ):
        problem = _int_problem(name, value, minimum)
        if problem:
            problems.append(problem)
    counts_ok = all(
        _int_problem(n, v, m) is None
        for n, v, m in (("w", warmup_iterations, 0), ("r", num_rounds, 0), ("p", pseudo_label_interval, 1), ("b", batch_size, 1))
    )
    if _is_int(batch_size) and batch_size >= 1 and (not _is_int(labeled_per_batch) or not 1 <= labeled_per_batch <= batch_size):
        problems.append(f"'labeled_per_batch' = {labeled_per_batch!r}: expected an integer in [1, batch_size = {batch_size}]")
    if counts_ok:
        total = warmup_iterations + num_rounds * pseudo_label_interval
        if total < 1:
            problems.append(f"'warmup_iterations' + 'num_rounds' * 'pseudo_label_interval' = {total}: expected at least 1 iteration")
        joint = num_rounds * pseudo_label_interval > 0
        if joint and matching == "inter" and _is_number(lambda_cont) and lambda_cont > 0 and batch_size % 2:
            problems.append(
                f"'batch_size' = {batch_size}: 'matching' = 'inter' pairs slice b with b + B/2 in the joint batch, "
                "so the batch size must be even"
            )
        if total >= 1 and _is_int(val_interval) and val_interval >= 1 and total % val_interval:
            run = math.ceil(total / val_interval) * val_interval
            _LOGGER.warning(
                f"'val_interval' = {val_interval} does not divide the {total} scheduled iterations: "
                f"the trainer runs {run} iterations (the joint phase gets the extra ones)."
            )
    problems += _split_problems(split, setting, combo, dataset_name)
    for name, value in (switches or {}).items():
        if not isinstance(value, bool):
            problems.append(
                f"'{name}' = {value!r}: expected True or False (on the command line write --{name} True or False, "
                "capitalised: a lower-case 'false' is a non-empty string and would count as on)"
            )
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise ConfigValueError(f"{len(problems)} invalid training config value(s):\n{body}")


def _rank() -> int:
    """This process's rank: from torch.distributed when initialised, else the launcher's ``RANK`` variable."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def write_run_info(output_dir: str | os.PathLike, seed: int, filename: str = "run_info.json", **config: Any) -> Path | None:
    """Record the seed, the given config values and software versions in ``<output_dir>/<filename>``.

    The file is written atomically by rank 0 only. Each call appends the command line and time to
    an ``invocations`` list (a resumed or evaluated run adds a line); when the recorded seed or
    config differ from this call's, the record is replaced and a warning says so.

    Args:
        output_dir: the run's output folder (created when missing).
        seed: the training seed (``seed`` config id).
        filename: name of the record.
        config: further values to record, e.g. ``split``, ``setting``, ``combo``, ``split_seed``.

    Returns:
        The path written, or ``None`` on ranks other than 0.
    """
    if _rank() != 0:
        return None
    import monai
    import torch

    import plc_monai

    path = Path(output_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"seed": _jsonable(seed), "config": _jsonable(config)}
    invocations: list = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("seed") == record["seed"] and previous.get("config") == record["config"]:
            invocations = list(previous.get("invocations", []))
        elif previous:
            _LOGGER.warning(f"{path} described a run with other settings; replacing it.")
    invocations.append({
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": [os.path.basename(sys.executable), *sys.argv],
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    })
    record["invocations"] = invocations
    record["versions"] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
        "plc_monai": plc_monai.__version__,
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
