"""Shared pieces of the bundle tests: phantom data, tiny overrides and a ``python -m monai.bundle`` runner.

The bundle tests (``test_bundles.py``, ``test_inference.py``, ``test_deploy.py``) run the real entry
points as subprocesses. The expensive runs (training, inference) are done once per test session
and per bundle: :func:`session_cached` memoises them in this module, which pytest imports once (the
``tests/`` folder is on ``sys.path``), so every test file that asks for the trained ACDC bundle
gets the same run, written under the session's ``tmp_path_factory`` folder.

Sizes are chosen for two CPU cores: 7 phantom subjects of ``64 x 64 x 6`` voxels, resampled to
a coarse in-plane spacing and cropped to ``48 x 48``, a ``[4, 8, 8]`` UNet, N4 off, and a
6-iteration schedule (2 warm-up iterations, then 2 pseudo-label rounds of 2 iterations).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SHARED = REPO / ".." / "shared"
REAL_SMALL = SHARED / "data" / "real_small"
SCHEMA = SHARED / "schema" / "meta_schema_20240725.json"
NAMES = ("acdc", "prostate", "mmwhs")

PHANTOM_SUBJECTS = 7
PHANTOM_IMAGE_SIZE = (64, 64)
PHANTOM_SLICES = 6

TINY_CROP = 48
TINY_CHANNELS = [4, 8, 8]
# In-plane spacing (mm) that maps each phantom's field of view (64 voxels of about 4-5 mm for
# ACDC, 1.6-2.7 mm for prostate, 3.2-4 mm for MM-WHS) to roughly the 48-voxel crop.
TINY_SPACING = {"acdc": 5.0, "prostate": 2.5, "mmwhs": 4.0}

# 2 warm-up iterations, then 2 rounds of 2 joint iterations: refreshes before iterations 3 and 5.
TINY_SCHEDULE: dict[str, Any] = {
    "warmup_iterations": 2,
    "num_rounds": 2,
    "pseudo_label_interval": 2,
    "val_interval": 2,
    "log_interval": 2,
    "save_interval": 2,
    "batch_size": 4,
    "labeled_per_batch": 2,
}
TINY_TOTAL_ITERATIONS = (
    TINY_SCHEDULE["warmup_iterations"] + TINY_SCHEDULE["num_rounds"] * TINY_SCHEDULE["pseudo_label_interval"]
)

SUBPROCESS_TIMEOUT_S = 600

_SESSION_CACHE: dict[Hashable, Any] = {}


def session_cached(key: Hashable, factory: Callable[[], Any]) -> Any:
    """Return ``factory()``, computed once per test session for ``key`` (shared across test files).

    A failed ``factory`` is cached as its exception and re-raised for every later caller, so a
    broken training run fails each dependent test once instead of being re-run by each of them.
    """
    if key not in _SESSION_CACHE:
        try:
            _SESSION_CACHE[key] = factory()
        except Exception as e:  # re-raised below and for later callers
            _SESSION_CACHE[key] = e
    value = _SESSION_CACHE[key]
    if isinstance(value, Exception):
        raise value
    return value


# ----------------------------------------------------------------------------------------- data


def config_file(name: str, config: str) -> Path:
    """Path of ``bundles/<name>/configs/<config>.json``."""
    return BUNDLES / name / "configs" / f"{config}.json"


def config_arg(name: str, *configs: str) -> str:
    """The ``--config_file`` value merging ``configs`` of bundle ``name`` in order (MONAI's list form)."""
    paths = [str(config_file(name, c)) for c in configs]
    return paths[0] if len(paths) == 1 else repr(paths)


def write_phantom(name: str, out: Path, num_subjects: int = PHANTOM_SUBJECTS) -> Path:
    """Write a tiny phantom of dataset ``name`` under ``out``; returns its ``dataset_dir``.

    ACDC's reader expects the ``training`` folder of the download, the other two the dataset root.
    """
    from plc_monai.data.phantom import write_phantom_dataset

    write_phantom_dataset(name, out, num_subjects=num_subjects, image_size=PHANTOM_IMAGE_SIZE, num_slices=PHANTOM_SLICES)
    return out / "training" if name == "acdc" else out


def phantom_entries(name: str, dataset_dir: Path) -> list[dict[str, Any]]:
    """The phantom's datalist (``image``, ``label``, ``id``, ...) as the bundle's reader sees it."""
    from plc_monai.data.readers import read_datalist

    return read_datalist(name, dataset_dir)


def native_label(name: str, entry: Mapping[str, Any]) -> np.ndarray:
    """The reference label of ``entry`` at native resolution as class indices ``[X, Y, Z]``.

    Computed independently of the bundle transforms: raw label values are mapped with
    ``np.searchsorted`` on the dataset's ``raw_label_values`` (after the entry's label aliases).
    """
    from plc_monai.data.specs import get_spec

    raw = np.asarray(nib.load(entry["label"]).dataobj).astype(np.int64)
    for alias, target in entry.get("raw_label_aliases") or []:
        raw[raw == alias] = target
    values = np.asarray(get_spec(name).raw_label_values, dtype=np.int64)
    index = np.searchsorted(values, raw)
    if np.any(index >= len(values)) or np.any(values[np.minimum(index, len(values) - 1)] != raw):
        raise ValueError(f"{entry['label']} holds values outside {values.tolist()}: {np.unique(raw).tolist()}")
    return index


# ------------------------------------------------------------------------------------ overrides


def tiny_overrides(name: str) -> dict[str, Any]:
    """Network and preprocessing overrides shared by train, evaluate, inference and export."""
    return {"crop_size": TINY_CROP, "spacing_mm": TINY_SPACING[name], "channels": list(TINY_CHANNELS), "n4": False}


def train_overrides(name: str, bundle_root: Path, dataset_dir: Path, **extra: Any) -> dict[str, Any]:
    """Everything a tiny training (or train + evaluate) run needs: data, split, sizes, schedule."""
    return {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(dataset_dir),
        "split": "random",
        "setting": "tr1",
        **tiny_overrides(name),
        **TINY_SCHEDULE,
        **extra,
    }


def cli_value(value: Any) -> str:
    """Spell ``value`` so that Python Fire (MONAI's CLI parser) reads it back as the same object.

    Fire evaluates each value with ``ast.literal_eval``: booleans must be ``True``/``False`` (a
    lower-case ``false`` stays the *string* ``'false'``, which is truthy), lists and dicts are
    written as Python literals, anything else (paths) as text.
    """
    if isinstance(value, (bool, int, float, list, tuple, dict)) or value is None:
        return repr(value)
    return str(value)


def cli_args(overrides: Mapping[str, Any]) -> list[str]:
    """``["--key", "value", ...]`` for ``python -m monai.bundle``."""
    args: list[str] = []
    for key, value in overrides.items():
        args += [f"--{key}", cli_value(value)]
    return args


# --------------------------------------------------------------------------------------- runner


@dataclass
class BundleRun:
    """One finished ``python -m monai.bundle`` subprocess.

    Attributes:
        cmd: the command line.
        returncode: exit status.
        output: stdout and stderr together (MONAI's logging.conf logs to stdout, tracebacks go to stderr).
        extra: paths and values the caller wants to keep with the run.
    """

    cmd: list[str]
    returncode: int
    output: str
    extra: dict[str, Any] = field(default_factory=dict)

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]

    def check(self) -> BundleRun:
        """Raise ``AssertionError`` with the command and the end of its output unless it exited with 0."""
        if self.returncode != 0:
            raise AssertionError(
                f"command failed with exit status {self.returncode}:\n  {' '.join(self.cmd)}\n"
                f"--- output (end) ---\n{self.tail()}"
            )
        return self


def run_bundle(
    subcommand: Sequence[str], overrides: Mapping[str, Any] | None = None, timeout: float = SUBPROCESS_TIMEOUT_S
) -> BundleRun:
    """Run ``python -m monai.bundle <subcommand> <--key value ...>`` from the repository root.

    Args:
        subcommand: e.g. ``["run", "training", "--config_file", path]`` or ``["ckpt_export", "network_def"]``.
        overrides: config ids and values appended as ``--id value`` (see :func:`cli_value`).
        timeout: seconds before the run is killed (the test then fails).

    Returns:
        The finished run; call :meth:`BundleRun.check` to require success.
    """
    cmd = [sys.executable, "-m", "monai.bundle", *subcommand, *cli_args(dict(overrides or {}))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return BundleRun(cmd=cmd, returncode=proc.returncode, output=proc.stdout + "\n" + proc.stderr)


# ----------------------------------------------------------------------------------- log parsing

_FLOAT = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"


def logged_metric_values(output: str, metric: str = "val_mean_dice") -> list[float]:
    """Every value logged as ``<metric>=X`` or ``<metric>: X`` in a run's output."""
    return [float(v) for v in re.findall(rf"{re.escape(metric)}\s*[=:]\s*{_FLOAT}", output)]


def resumed_iterations(output: str) -> list[int]:
    """Iterations of the ``resumed from <checkpoint> at iteration N`` log lines."""
    return [int(v) for v in re.findall(r"resumed from \S+ at iteration (\d+)", output)]


def logged_progress_iterations(output: str) -> list[int]:
    """Iterations of the trainer's progress lines ``<phase> | iteration N/T | ...``."""
    return [int(v) for v in re.findall(r"\| iteration (\d+)/\d+ \|", output)]


# ------------------------------------------------------------------------------------- session runs


@dataclass
class TrainedBundle:
    """A tiny training of one bundle on its phantom, shared by the tests of a session.

    Attributes:
        name: bundle name.
        bundle_root: the ``--bundle_root`` of the run (outside the repository).
        dataset_dir: the phantom's ``dataset_dir``.
        runs: the training commands run, in order.
    """

    name: str
    bundle_root: Path
    dataset_dir: Path
    runs: list[BundleRun]

    @property
    def ckpt_dir(self) -> Path:
        return self.bundle_root / "models"

    @property
    def output_dir(self) -> Path:
        return self.bundle_root / "runs" / "inter"

    @property
    def model(self) -> Path:
        return self.ckpt_dir / "model.pt"

    @property
    def output(self) -> str:
        return "\n".join(r.output for r in self.runs)


def session_root(tmp_path_factory: Any) -> Path:
    """One folder per test session for the shared bundle runs."""
    return session_cached("session_root", lambda: tmp_path_factory.mktemp("bundle_runs"))


def phantom_dataset(name: str, tmp_path_factory: Any) -> Path:
    """The session's phantom of dataset ``name`` (written once); returns its ``dataset_dir``."""
    return session_cached(("phantom", name), lambda: write_phantom(name, session_root(tmp_path_factory) / f"phantom_{name}"))


def trained_bundle(name: str, tmp_path_factory: Any) -> TrainedBundle:
    """Train bundle ``name`` once per session through ``python -m monai.bundle run training``.

    ACDC is trained in two commands to exercise resuming: the first stops after 2 of the 3 epochs
    (``--train#trainer#max_epochs 2``: iteration 4, as if killed after the checkpoint written
    there), the second is the plain command and must continue from iteration 4. Pseudo-labels are
    saved as NIfTI (``save_pseudo_labels``) so tests can check both refresh rounds.
    """

    def train() -> TrainedBundle:
        dataset_dir = phantom_dataset(name, tmp_path_factory)
        bundle_root = session_root(tmp_path_factory) / f"bundle_{name}"
        overrides = train_overrides(name, bundle_root, dataset_dir, save_pseudo_labels=True)
        command = ["run", "training", "--config_file", config_arg(name, "train")]
        runs = []
        if name == "acdc":
            runs.append(run_bundle(command, {**overrides, "train#trainer#max_epochs": 2}).check())
        runs.append(run_bundle(command, overrides).check())
        return TrainedBundle(name=name, bundle_root=bundle_root, dataset_dir=dataset_dir, runs=runs)

    return session_cached(("trained", name), train)


def inference_inputs(name: str, tmp_path_factory: Any, count: int = 2) -> list[Path]:
    """A folder with the first ``count`` phantom images of ``name`` (ACDC: plus one real LGE volume when present).

    Returns:
        The input files in the folder.
    """

    def build() -> list[Path]:
        import shutil

        folder = session_root(tmp_path_factory) / f"infer_in_{name}"
        folder.mkdir()
        entries = phantom_entries(name, phantom_dataset(name, tmp_path_factory))[:count]
        files = []
        for entry in entries:
            target = folder / Path(entry["image"]).name
            shutil.copyfile(entry["image"], target)
            files.append(target)
        real = real_lge_volume()
        if name == "acdc" and real is not None:
            target = folder / real.name
            shutil.copyfile(real, target)
            files.append(target)
        return files

    return session_cached(("inference_inputs", name), build)


def real_lge_volume() -> Path | None:
    """The smallest MS-CMRSeg LGE volume of the shared real data (400 x 400 x 15, LSP), or ``None``."""
    path = REAL_SMALL / "mscmr_lge" / "val" / "images" / "subject41_DE.nii.gz"
    return path if path.is_file() else None


def inference_run(name: str, tmp_path_factory: Any) -> BundleRun:
    """Run the bundle's ``inference.json`` on :func:`inference_inputs` with the trained tiny model (once per session)."""

    def infer() -> BundleRun:
        trained = trained_bundle(name, tmp_path_factory)
        inputs = inference_inputs(name, tmp_path_factory)
        out = session_root(tmp_path_factory) / f"infer_out_{name}"
        overrides = {
            "bundle_root": str(trained.bundle_root),
            "dataset_dir": str(inputs[0].parent),
            "output_dir": str(out),
            **tiny_overrides(name),
        }
        run = run_bundle(["run", "--config_file", config_arg(name, "inference")], overrides)
        run.extra.update(output_dir=out, inputs=inputs, overrides=overrides)
        return run

    return session_cached(("inference", name), infer)


def seg_name(image: Path, postfix: str = "seg") -> str:
    """``<input name>_<postfix>.nii.gz`` for an input ``<input name>.nii[.gz]``."""
    stem = image.name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return f"{stem}_{postfix}.nii.gz"


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
