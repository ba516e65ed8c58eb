"""One experiment run (a method on one labeled/validation combination): its folder, settings and commands.

A *method* is a small JSON file in ``<bundle>/configs/methods/`` merged after ``train.json`` (see
``docs/experiments.md``). A *run* trains one method on one split with the real bundle command::

    python -m monai.bundle run training --config_file "['<bundle>/configs/train.json', '<bundle>/configs/methods/<method>.json']" --<id> <value> ...

and evaluates the result with ``evaluate.json`` merged after both. This module builds the per-run
settings (output folders, split, seeds, user overrides) and the commands; :mod:`.harness` runs them.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "RunSpec",
    "available_methods",
    "method_config",
    "bundle_dataset",
    "combo_split_seed",
    "plan_runs",
    "bundle_command",
    "bundle_parser",
]

#: ids of the run folder layout, set by the harness for every run; user overrides cannot change them.
RUN_LAYOUT_IDS = ("output_dir", "ckpt_dir", "bundle_root", "dataset_dir", "split", "setting", "combo", "split_seed")


def _bundle_path(bundle: str | os.PathLike) -> Path:
    path = Path(bundle).expanduser().resolve()
    if not (path / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"{path} is not a plc_monai bundle: {path / 'configs' / 'train.json'} does not exist.")
    return path


def available_methods(bundle: str | os.PathLike) -> list[str]:
    """Names of the method overrides in ``<bundle>/configs/methods/`` (file names without ``.json``)."""
    folder = _bundle_path(bundle) / "configs" / "methods"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def method_config(bundle: str | os.PathLike, method: str) -> Path:
    """The override file of ``method`` in ``bundle``.

    Raises:
        FileNotFoundError: when ``<bundle>/configs/methods/<method>.json`` does not exist; the message
            lists the methods that do.
    """
    path = _bundle_path(bundle) / "configs" / "methods" / f"{method}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no method {method!r} in {path.parent} (expected {path.name}); available: {available_methods(bundle)}."
        )
    return path


def bundle_dataset(bundle: str | os.PathLike) -> str:
    """The ``dataset_name`` of the bundle's ``train.json`` (``acdc``, ``prostate``, ``mmwhs``)."""
    path = _bundle_path(bundle) / "configs" / "train.json"
    try:
        return str(json.loads(path.read_text())["dataset_name"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read its 'dataset_name' ({err}).") from err


def combo_split_seed(combo: str | int) -> int:
    """The seed of a random split for combination ``combo``: ``"c3"`` or ``"3"`` or ``3`` -> ``3``.

    Raises:
        ValueError: when ``combo`` is neither an integer nor ``c<integer>``.
    """
    text = str(combo).strip().lower()
    digits = text[1:] if text.startswith("c") else text
    if not digits.lstrip("-").isdigit():
        raise ValueError(f"combo {combo!r} names no split seed; expected 'c<integer>' or an integer for random splits.")
    return int(digits)


@dataclass
class RunSpec:
    """One training + evaluation of ``method`` on ``combo``.

    Attributes:
        method: method name (a file of ``<bundle>/configs/methods``).
        combo: ``c1`` ... for paper splits; for random splits the split seed is :func:`combo_split_seed`.
        run_dir: the run's folder (``<output>/runs/<method>/<combo>``).
        config_files: ``[train.json, methods/<method>.json]``.
        settings: bundle ids set for this run (Python values), applied after the config files.
        dropped: user overrides not applied because the method file sets the same id.
    """

    method: str
    combo: str
    run_dir: Path
    config_files: list[Path]
    settings: dict[str, Any]
    dropped: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}/{self.combo}"

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "models"

    @property
    def eval_dir(self) -> Path:
        return self.run_dir / "eval"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def train_marker(self) -> Path:
        """Written when the training command has finished successfully."""
        return self.run_dir / "train_done.json"

    @property
    def summary_file(self) -> Path:
        """The evaluation summary of the run's final model; its existence marks a finished run."""
        return self.eval_dir / "summary.json"

    @property
    def evaluate_files(self) -> list[Path]:
        return [*self.config_files, self.config_files[0].parent / "evaluate.json"]

    def round_eval_dir(self, round_index: int) -> Path:
        return self.run_dir / "eval_rounds" / f"round_{round_index}"


def _method_ids(path: Path) -> set[str]:
    """Ids a method file sets (``+``-merge keys excluded: they extend, they do not set)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of bundle ids, got {type(data).__name__}.")
    return {k for k in data if not k.startswith("+")}


def plan_runs(
    bundle: str | os.PathLike,
    setting: str,
    combos: Sequence[str],
    methods: Sequence[str],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "paper",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[RunSpec]:
    """The runs of an experiment, method-major (all combos of the first method first).

    Every run gets its own ``output_dir`` and ``ckpt_dir`` (``<output_dir>/runs/<method>/<combo>``);
    all share the preprocessing cache (``cache_dir``, default ``<output_dir>/cache``). With
    ``split="paper"`` the run uses the paper's fixed ids of ``setting``/``combo``; with
    ``split="random"`` the combo names the split seed (``c3`` -> ``split_seed 3``). The training seed
    ``seed`` is the same for every run, so methods differ only in what the method file changes.

    ``overrides`` are bundle ids applied to every run (after the method file), except ids that the
    method file itself sets: ``--lambda_cont 1.0`` changes the proposed method's weight but does not
    turn self-training (``lambda_cont 0``) into something else. Such skipped overrides are recorded in
    :attr:`RunSpec.dropped` and reported with a warning.

    Args:
        bundle: the bundle folder (``bundles/acdc``).
        setting: ``tr1``, ``tr2``, ``tr8`` (``trN`` for random splits).
        combos: labeled/validation combinations (``c1`` ...) or split seeds for random splits.
        methods: method names of ``<bundle>/configs/methods``.
        dataset_dir: the dataset folder the bundle reads.
        output_dir: the experiment folder.
        split: ``paper`` or ``random``.
        seed: training seed of every run.
        overrides: further bundle ids (``{"warmup_iterations": 150, ...}``).
        device: ``cpu``, ``cuda:0``, ...; ``None`` keeps the bundle's choice.
        cache_dir: preprocessing cache shared by all runs.

    Returns:
        One :class:`RunSpec` per (method, combo).

    Raises:
        ValueError: empty ``methods``/``combos``, an unknown split, a combo that is no seed for
            random splits, or an override of a run-layout id (``output_dir``, ``split`` ...).
        FileNotFoundError: an unknown bundle, method or dataset folder.
    """
    bundle_path = _bundle_path(bundle)
    if not methods:
        raise ValueError("no methods given; available: " + ", ".join(available_methods(bundle_path)))
    if not combos:
        raise ValueError("no combos given (e.g. c1,c2,c3; for random splits the split seeds).")
    if split not in ("paper", "random"):
        raise ValueError(f"split must be 'paper' or 'random', got {split!r}.")
    data_path = Path(dataset_dir).expanduser().resolve()
    if not data_path.is_dir():
        raise FileNotFoundError(f"dataset folder {data_path} does not exist.")
    overrides = dict(overrides or {})
    fixed = sorted(set(overrides) & set(RUN_LAYOUT_IDS))
    if fixed:
        raise ValueError(f"override(s) {fixed} are set by the harness for each run; use its own arguments instead.")
    out = Path(output_dir).expanduser().resolve()
    cache = Path(cache_dir).expanduser().resolve() if cache_dir is not None else out / "cache"
    device_ids: dict[str, Any] = {}
    if device is not None:
        device_ids["device"] = f"$torch.device({str(device)!r})"
        if str(device).startswith("cpu"):
            device_ids.update(amp=False, channels_last=False)
    runs = []
    train_json = bundle_path / "configs" / "train.json"
    for method in methods:
        method_file = method_config(bundle_path, method)
        method_ids = _method_ids(method_file)
        dropped = {k: v for k, v in overrides.items() if k in method_ids}
        kept = {k: v for k, v in overrides.items() if k not in method_ids}
        if dropped:
            warnings.warn(
                f"method {method!r} sets {sorted(dropped)} itself; the command-line value(s) are not applied to it.",
                stacklevel=2,
            )
        for combo in combos:
            combo = str(combo)
            run_dir = out / "runs" / method / combo
            settings: dict[str, Any] = {
                "bundle_root": str(bundle_path),
                "dataset_dir": str(data_path),
                "split": split,
                "setting": setting,
                "seed": int(seed),
                "cache_dir": str(cache),
                **device_ids,
                **{k: v for k, v in kept.items() if k != "cache_dir"},
                "output_dir": str(run_dir),
                "ckpt_dir": str(run_dir / "models"),
            }
            if split == "paper":
                settings["combo"] = combo
            else:
                settings["split_seed"] = combo_split_seed(combo)
            runs.append(RunSpec(method, combo, run_dir, [train_json, method_file], settings, dropped))
    return runs


def _cli_value(value: Any) -> str:
    """A bundle id's value as ``python -m monai.bundle run`` reads it back.

    The bundle command line parses values with ``fire``, which reads Python literals: ``False`` is a
    bool but ``false`` (JSON) stays the string ``"false"``, which is truthy. So containers, bools and
    ``None`` are written with ``repr``.
    """
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, (list, dict, bool)) or value is None:
        return repr(value)
    return str(value)


def bundle_command(
    config_files: Sequence[str | os.PathLike], run_id: str, settings: Mapping[str, Any], python: str | None = None
) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file "[...]" --<id> <value> ...`` as an argv list."""
    files = str([str(f) for f in config_files])
    cmd = [python or sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in settings.items():
        cmd += [f"--{key}", _cli_value(value)]
    return cmd


def bundle_parser(config_files: Sequence[str | os.PathLike], settings: Mapping[str, Any]) -> Any:
    """A parsed :class:`monai.bundle.ConfigParser` of ``config_files`` with ``settings`` applied.

    Same merge order as the command line: files in order (``+`` keys extend lists/dicts), then each
    ``settings`` id. Nothing is instantiated until ``get_parsed_content`` is called.
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    for key, value in settings.items():
        parser[key] = list(value) if isinstance(value, tuple) else value
    parser.parse()
    return parser
