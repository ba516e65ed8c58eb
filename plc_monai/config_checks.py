"""Start-up checks of a training configuration that span several config ids (no single constructor sees them).

Run from the bundles' ``initialize`` list before any data is read; docs/troubleshooting.md lists every message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

__all__ = ["ConfigValueError", "SPLIT_CHOICES", "DATASET_CHOICES", "check_training_config"]

SPLIT_CHOICES = ("paper", "random")
"""Values of the ``split`` config id besides the path of a split ``.json`` file."""

DATASET_CHOICES = ("acdc", "prostate", "mmwhs", "folder")
"""Datasets :func:`plc_monai.data.readers.read_datalist` reads."""

_LOGGER = logging.getLogger(__name__)


class ConfigValueError(ValueError):
    """One or more config values are invalid; the message names each config id, value and expectation."""


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _crop_problems(crop_size: Any, network: Any) -> list[str]:
    """Every in-plane size must be divisible by the network's ``divisor`` (``2 ** poolings``)."""
    is_list = isinstance(crop_size, Sequence) and not isinstance(crop_size, (str, bytes))
    sizes = list(crop_size) if is_list else [crop_size]
    if not sizes or not all(_is_int(s) and s > 0 for s in sizes):
        return [f"'crop_size' = {crop_size!r}: expected a positive integer (or a list of them)"]
    divisor = getattr(network, "divisor", None)  # a network without one states no input constraint
    bad = [s for s in sizes if s % divisor] if _is_int(divisor) and divisor >= 1 else []
    if not bad:
        return []
    depth = divisor.bit_length() - 1
    lower = max(divisor, bad[0] - bad[0] % divisor)
    return [f"'crop_size' = {crop_size!r}: must be divisible by {divisor} = 2**{depth}, since the network pools "
            f"{depth} times (len('channels') - 1); use e.g. {lower} or {lower + divisor}, or fewer 'channels' levels"]


def _split_problems(split: Any, setting: Any, combo: Any, dataset: str) -> list[str]:
    """The split choice exists: paper setting/combo of the dataset, a ``trN`` setting, or a readable split file."""
    if not isinstance(split, str) or not (split in SPLIT_CHOICES or split.endswith(".json")):
        return [f"'split' = {split!r}: expected one of {list(SPLIT_CHOICES)} or the path of a split .json file"]
    if split == "random":
        from plc_monai.data.splits import random_setting_size

        if random_setting_size(setting) is None:
            return [f"'setting' = {setting!r}: a random split needs 'trN' (N >= 1 labeled volumes), e.g. 'tr1', 'tr8'"]
    elif split == "paper":
        from plc_monai.data.splits import PAPER_SPLIT_DATASETS, list_paper_settings

        if dataset not in PAPER_SPLIT_DATASETS:
            return [f"'split' = 'paper': the paper's splits exist for {list(PAPER_SPLIT_DATASETS)}, "
                    f"not dataset {dataset!r}; use 'random' or a split file"]
        settings = list_paper_settings(dataset)
        if setting not in settings:
            return [f"'setting' = {setting!r}: not a paper setting of {dataset}; expected one of {list(settings)}"]
        if combo not in settings[setting]:
            return [f"'combo' = {combo!r}: not a combination of {dataset} {setting}; "
                    f"expected one of {settings[setting]}"]
    else:
        from plc_monai.data.splits import load_split

        try:
            load_split(split)
        except (FileNotFoundError, ValueError) as err:
            return [f"'split' = {split!r}: {err}"]
    return []


def check_training_config(
    network: Any,
    crop_size: int | Sequence[int],
    contrastive_loss: Any,
    lambda_cont: float,
    warmup_iterations: int,
    num_rounds: int,
    pseudo_label_interval: int,
    val_interval: int,
    batch_size: int,
    labeled_per_batch: int,
    dataset: str,
    split: str,
    setting: str,
    combo: str,
    switches: Mapping[str, Any] | None = None,
) -> None:
    """Check the values of a training bundle that span several ids; raise one error listing every problem.

    Each argument is the config id of the same name (``dataset`` is ``dataset_name``). A total
    iteration count that ``val_interval`` does not divide only logs a warning: the trainer runs
    ``ceil(total / val_interval) * val_interval`` iterations.

    Args:
        network: the built ``network_def``; its ``divisor`` (``2 ** poolings``), if any, must divide ``crop_size``.
        crop_size: in-plane crop size, an int or a list of ints.
        contrastive_loss: the built ``contrastive_loss`` or ``None``; ``matching="inter"`` needs an even ``batch_size``.
        lambda_cont: weight of the contrastive loss, finite and >= 0.
        warmup_iterations: iterations of step 1, >= 0.
        num_rounds: pseudo-label rounds of step 2, >= 0.
        pseudo_label_interval: iterations per round, >= 1.
        val_interval: iterations between validations, >= 1.
        batch_size: slices per iteration, >= 1.
        labeled_per_batch: labeled slices per joint iteration, in ``[1, batch_size]``.
        dataset: one of :data:`DATASET_CHOICES`.
        split: ``"paper"``, ``"random"`` or a split file path.
        setting: e.g. ``"tr1"``: a paper setting of the dataset, or ``trN`` for random splits.
        combo: paper combination of the setting, e.g. ``"c1"``.
        switches: on/off values by id (``n4``, ``amp``, ...), each a real bool (``--n4 false`` is a string).

    Raises:
        ConfigValueError: (a ``ValueError``) naming every invalid config id, its value and what is expected.
    """
    problems: list[str] = []
    dataset_name = str(dataset).lower() if isinstance(dataset, str) else dataset
    if dataset_name not in DATASET_CHOICES:
        problems.append(f"'dataset_name' = {dataset!r}: expected one of {list(DATASET_CHOICES)}")
    problems += _crop_problems(crop_size, network)
    counts = {"warmup_iterations": (warmup_iterations, 0), "num_rounds": (num_rounds, 0),
              "pseudo_label_interval": (pseudo_label_interval, 1), "val_interval": (val_interval, 1),
              "batch_size": (batch_size, 1)}  # name: (value, minimum)
    schedule = [f"'{name}' = {value!r}: expected an integer >= {minimum}"
                for name, (value, minimum) in counts.items() if not _is_int(value) or value < minimum]
    if isinstance(lambda_cont, bool) or not isinstance(lambda_cont, Real) or not 0 <= lambda_cont < math.inf:
        schedule.append(f"'lambda_cont' = {lambda_cont!r}: expected a finite number >= 0 "
                        "(0 disables the contrastive loss)")
    if not schedule:  # the rules below combine these values
        if not _is_int(labeled_per_batch) or not 1 <= labeled_per_batch <= batch_size:
            schedule.append(f"'labeled_per_batch' = {labeled_per_batch!r}: "
                            f"expected an integer in [1, batch_size = {batch_size}]")
        joint = num_rounds * pseudo_label_interval
        total = warmup_iterations + joint
        if total < 1:
            schedule.append(f"'warmup_iterations' + 'num_rounds' * 'pseudo_label_interval' = {total}: "
                            "expected at least 1 iteration")
        if joint > 0 and getattr(contrastive_loss, "matching", None) == "inter" and lambda_cont > 0 and batch_size % 2:
            schedule.append(f"'batch_size' = {batch_size}: 'matching' = 'inter' pairs slice b with b + B/2 "
                            "in the joint batch, so the batch size must be even")
        if total >= 1 and total % val_interval:
            _LOGGER.warning(
                f"'val_interval' = {val_interval} does not divide the {total} scheduled iterations: "
                f"the trainer runs {math.ceil(total / val_interval) * val_interval} iterations "
                "(the joint phase gets the extra ones)."
            )
    problems += schedule + _split_problems(split, setting, combo, dataset_name)
    problems += [
        f"'{name}' = {value!r}: expected True or False (on the command line write --{name} True or False, "
        "capitalised: a lower-case 'false' is a non-empty string and would count as on)"
        for name, value in (switches or {}).items() if not isinstance(value, bool)
    ]
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise ConfigValueError(f"{len(problems)} invalid training config value(s):\n{body}")
