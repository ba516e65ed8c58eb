"""One experiment run (a method on one labeled/validation combination): its folder, settings and commands.

A *method* is a JSON file of ``<bundle>/configs/methods/`` merged after ``train.json`` (docs/experiments.md).
:func:`plan_runs` turns an :class:`ExperimentSpec` into :class:`RunSpec` s; :func:`bundle_command` is the
``python -m monai.bundle run`` command of one.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from plc_monai.cli import bundle_dir
from plc_monai.data.splits import load_split

__all__ = [
    "ExperimentSpec", "RunSpec", "available_methods", "method_config", "combo_split_seed", "plan_runs",
    "bundle_command", "bundle_parser",
]

#: ids of the run folder layout, set by the harness for every run; user overrides cannot change them.
RUN_LAYOUT_IDS = ("output_dir", "ckpt_dir", "bundle_root", "dataset_dir", "split", "setting", "combo", "split_seed")


def available_methods(bundle: str | os.PathLike) -> list[str]:
    """Names of the method overrides in ``<bundle>/configs/methods/`` (file names without ``.json``)."""
    folder = bundle_dir(bundle) / "configs" / "methods"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def method_config(bundle: str | os.PathLike, method: str) -> Path:
    """``<bundle>/configs/methods/<method>.json``; a :class:`FileNotFoundError` listing the methods if it is missing."""
    path = bundle_dir(bundle) / "configs" / "methods" / f"{method}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no method {method!r} in {path.parent} (expected {path.name}); available: "
                                f"{available_methods(bundle)}.")
    return path


def combo_split_seed(combo: str | int) -> int:
    """The seed of a random split for ``combo``: ``"c3"``, ``"3"`` or ``3`` -> ``3`` (else a ``ValueError``)."""
    digits = str(combo).strip().lower().removeprefix("c")
    if not digits.lstrip("-").isdigit():
        raise ValueError(f"combo {combo!r} names no split seed; expected 'c<integer>' or an integer for random splits.")
    return int(digits)


def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


@dataclass
class ExperimentSpec:
    """What an experiment computes: which methods on which splits of which data, into which folder.

    Paths are made absolute and every value is checked here, before any run starts; how the runs are executed
    is :class:`~plc_monai.experiments.launch.LaunchOptions`.

    Args:
        bundle: the bundle folder, e.g. ``bundles/acdc``.
        setting: ``tr1``, ``tr2``, ``tr8`` (``trN`` for random splits).
        combos: labeled/validation combinations (``c1`` ...), or split seeds for random splits.
        methods: method names of ``<bundle>/configs/methods``.
        dataset_dir: the dataset folder the bundle reads.
        output_dir: the experiment folder.
        split: ``"paper"`` (the paper's ids of ``setting``/``combo``), ``"random"`` (the combo names the seed:
            ``c3`` -> ``split_seed 3``), a folder of :func:`~plc_monai.data.splits.save_split` files named
            ``<setting>_<combo>.json``, or one split ``.json`` file for a single combo. The words win over a
            folder of that name (write ``./paper`` for the folder).
        seed: training seed of every run.
        overrides: bundle ids applied to every run (see :func:`plan_runs`).
        device: ``cpu``, ``cuda:0``, ...; ``None`` keeps the bundle's choice.
        cache_dir: preprocessing cache shared by all runs (default ``<output_dir>/cache``).
        figures: write the figures with the tables.

    Raises:
        ValueError: empty ``methods``/``combos``, a combo that is no seed for random splits, an override of a
            run-layout id (``output_dir``, ``split`` ...), or a bad ``split`` (the message says why).
        FileNotFoundError: an unknown bundle or method, a missing dataset folder, or a split folder that lacks
            the file of a combo (the message lists the files it has).
    """

    bundle: str | os.PathLike
    setting: str
    combos: Sequence[str]
    methods: Sequence[str]
    dataset_dir: str | os.PathLike
    output_dir: str | os.PathLike
    split: str | os.PathLike = "paper"
    seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str | None = None
    cache_dir: str | os.PathLike | None = None
    figures: bool = True

    def __post_init__(self) -> None:
        self.bundle = bundle_dir(self.bundle)
        self.setting = str(self.setting)
        self.combos = tuple(str(c) for c in self.combos)
        self.methods = tuple(str(m) for m in self.methods)
        if not self.methods:
            raise ValueError("no methods given; available: " + ", ".join(available_methods(self.bundle)))
        if not self.combos:
            raise ValueError("no combos given (e.g. c1,c2,c3; for random splits the split seeds).")
        for method in self.methods:
            method_config(self.bundle, method)
        self.dataset_dir = _resolve(self.dataset_dir)
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"dataset folder {self.dataset_dir} does not exist.")
        self.output_dir = _resolve(self.output_dir)
        self.cache_dir = _resolve(self.cache_dir) if self.cache_dir is not None else self.output_dir / "cache"
        self.overrides = dict(self.overrides or {})
        fixed = sorted(set(self.overrides) & set(RUN_LAYOUT_IDS))
        if fixed:
            raise ValueError(f"override(s) {fixed} are set by the harness for each run; use its own arguments instead.")
        self.seed = int(self.seed)
        self.figures = bool(self.figures)
        self.split = self._checked_split(self.split)

    def _checked_split(self, split: str | os.PathLike) -> str:
        """``paper``/``random``, or the absolute path of the split folder/file after checking every file a run needs."""
        if str(split) in ("paper", "random"):
            if str(split) == "random":
                for combo in self.combos:
                    combo_split_seed(combo)
            return str(split)
        path = _resolve(split)
        if path.is_dir():
            files = [path / f"{self.setting}_{combo}.json" for combo in self.combos]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                has = sorted(p.name for p in path.glob("*.json")) or "no .json files"
                raise FileNotFoundError(f"split folder {path} lacks {missing} (expected <setting>_<combo>.json for "
                                        f"setting {self.setting!r} and combos {list(self.combos)}); it has: {has}.")
        elif path.suffix == ".json" and path.is_file():
            if len(self.combos) > 1:
                raise ValueError(f"split file {path} gives every combo the same volumes; with combos "
                                 f"{list(self.combos)} pass a folder of <setting>_<combo>.json files instead.")
            files = [path]
        else:
            raise ValueError(f"split must be 'paper', 'random', a folder of <setting>_<combo>.json split files or one "
                             f"split .json file; {str(split)!r} is none of these ({path} does not exist or is not a "
                             ".json file).")
        for file in files:
            load_split(file)  # a bad file fails here, naming itself, before any run starts
        return str(path)

    @property
    def dataset(self) -> str:
        """The ``dataset_name`` of the bundle's ``train.json`` (``acdc``, ``prostate``, ``mmwhs``)."""
        path = self.bundle / "configs" / "train.json"
        try:
            return str(json.loads(path.read_text())["dataset_name"])
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read its 'dataset_name' ({err}).") from err

    def split_settings(self, combo: str) -> dict[str, Any]:
        """The bundle ids that choose the split of ``combo``: ``split`` and ``combo`` or ``split_seed``."""
        if self.split == "paper":
            return {"split": "paper", "combo": combo}
        if self.split == "random":
            return {"split": "random", "split_seed": combo_split_seed(combo)}
        path = Path(self.split)
        file = path / f"{self.setting}_{combo}.json" if path.is_dir() else path
        return {"split": str(file), "combo": combo}

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (paths as strings); :meth:`from_dict` reads it back."""
        paths = {k: str(getattr(self, k)) for k in ("bundle", "dataset_dir", "output_dir", "cache_dir")}
        return {**asdict(self), **paths, "combos": list(self.combos), "methods": list(self.methods)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentSpec:
        """The spec of :meth:`to_dict`, checked again; ``ValueError`` for a missing or unknown field."""
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"experiment spec: missing fields {missing}, unknown fields {unknown}; expected {sorted(names)}.")
        return cls(**data)


@dataclass
class RunSpec:
    """One training + evaluation of ``method`` on ``combo``.

    Attributes:
        method: method name (a file of ``<bundle>/configs/methods``).
        combo: ``c1`` ... (for random splits, :func:`combo_split_seed` gives the split seed).
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
    def run_file(self) -> Path:
        """The run as JSON (:meth:`to_dict`), what a worker process or a cluster job reads."""
        return self.run_dir / "run.json"

    @property
    def train_marker(self) -> Path:
        """Written when the training command has finished successfully."""
        return self.run_dir / "train_done.json"

    @property
    def summary_file(self) -> Path:
        """The evaluation summary of the run's final model; its existence marks a finished run."""
        return self.eval_dir / "summary.json"

    def round_eval_dir(self, round_index: int) -> Path:
        return self.run_dir / "eval_rounds" / f"round_{round_index}"

    def round_files(self) -> dict[int, Path]:
        """The round models saved so far, ``{k: models/model_round_<k>.pt}`` for ``k = 0, 1, ...``."""
        from plc_monai.experiments.round_models import round_model_path

        paths = (round_model_path(self.ckpt_dir, k) for k in itertools.count())
        return dict(enumerate(itertools.takewhile(Path.is_file, paths)))

    def rounds_pending(self) -> list[int]:
        """Rounds whose model exists but has no evaluation yet."""
        return [k for k in self.round_files() if not (self.round_eval_dir(k) / "summary.json").is_file()]

    def is_finished(self) -> bool:
        """Trained, final model evaluated, every round model evaluated."""
        return self.summary_file.is_file() and self.train_marker.is_file() and not self.rounds_pending()

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready values; :meth:`from_dict` reads it back."""
        return {**asdict(self), "run_dir": str(self.run_dir), "config_files": [str(f) for f in self.config_files]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        """The run of :meth:`to_dict`; ``ValueError`` when a field is missing."""
        missing = [k for k in ("method", "combo", "run_dir", "config_files", "settings") if k not in data]
        if missing:
            raise ValueError(f"run description lacks {missing}; expected the output of RunSpec.to_dict().")
        return cls(str(data["method"]), str(data["combo"]), Path(data["run_dir"]),
                   [Path(f) for f in data["config_files"]], dict(data["settings"]), dict(data.get("dropped", {})))


def _method_ids(path: Path) -> set[str]:
    """Ids a method file sets (``+``-merge keys excluded: they extend, they do not set)."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of bundle ids, got {type(data).__name__}.")
    return {k for k in data if not k.startswith("+")}


def plan_runs(spec: ExperimentSpec) -> list[RunSpec]:
    """One :class:`RunSpec` per (method, combo), method-major, each in ``<output_dir>/runs/<method>/<combo>``.

    All runs share ``spec.cache_dir`` and ``spec.seed``. ``spec.overrides`` apply after the method file, except
    ids that the method file sets itself (recorded in :attr:`RunSpec.dropped`, with a warning).
    """
    device_ids: dict[str, Any] = {}
    if spec.device is not None:
        device_ids["device"] = f"$torch.device({str(spec.device)!r})"
        if str(spec.device).startswith("cpu"):
            device_ids.update(amp=False, channels_last=False)
    runs = []
    train_json = spec.bundle / "configs" / "train.json"
    for method in spec.methods:
        method_file = method_config(spec.bundle, method)
        method_ids = _method_ids(method_file)
        dropped = {k: v for k, v in spec.overrides.items() if k in method_ids}
        kept = {k: v for k, v in spec.overrides.items() if k not in method_ids}
        if dropped:
            warnings.warn(f"method {method!r} sets {sorted(dropped)} itself; the command-line value(s) are not "
                          "applied to it.", stacklevel=2)
        for combo in spec.combos:
            run_dir = spec.output_dir / "runs" / method / combo
            settings = {"bundle_root": str(spec.bundle), "dataset_dir": str(spec.dataset_dir), "setting": spec.setting,
                        "seed": spec.seed, "cache_dir": str(spec.cache_dir), **device_ids,
                        **{k: v for k, v in kept.items() if k != "cache_dir"}, **spec.split_settings(combo),
                        "output_dir": str(run_dir), "ckpt_dir": str(run_dir / "models")}
            runs.append(RunSpec(method, combo, run_dir, [train_json, method_file], settings, dropped))
    return runs


def bundle_command(
    config_files: Sequence[str | os.PathLike], run_id: str, settings: Mapping[str, Any], python: str | None = None
) -> list[str]:
    """``python -m monai.bundle run <run_id> --config_file "[...]" --<id> <value> ...`` as an argv list.

    Values are written as fire reads them back (Python literals): containers, bools and ``None`` as ``repr``
    (JSON's ``false`` would be the truthy string ``"false"``), the rest as ``str``.
    """
    files = str([str(f) for f in config_files])
    cmd = [python or sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", files]
    for key, value in settings.items():
        literal = isinstance(value, (list, tuple, dict, bool)) or value is None
        cmd += [f"--{key}", repr(list(value) if isinstance(value, tuple) else value) if literal else str(value)]
    return cmd


def bundle_parser(config_files: Sequence[str | os.PathLike], settings: Mapping[str, Any]) -> Any:
    """A parsed :class:`monai.bundle.ConfigParser` of ``config_files`` with ``settings`` applied, merged in the
    order of the command line (nothing is instantiated until ``get_parsed_content``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    for key, value in settings.items():
        parser[key] = list(value) if isinstance(value, tuple) else value
    parser.parse()
    return parser
