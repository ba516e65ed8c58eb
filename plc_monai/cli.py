"""The commands behind ``python -m plc_monai``: each a thin call into the module that does the work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text

__all__ = [
    "phantom", "check_data", "prepare", "demo", "bundle_dir", "demo_config", "format_comparison", "DEMO_MALLOC_TUNABLES",
]

# glibc malloc settings for the demo's bundle processes: freed memory stays in the process for the next step
# instead of going back to the kernel, which would zero fresh pages on every large allocation. The demo's
# timings in docs/training.md were measured with them. A GLIBC_TUNABLES of the caller's own wins.
DEMO_MALLOC_TUNABLES = (
    "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=536870912"
)

def bundle_dir(dataset: str) -> Path:
    """The folder of the shipped bundle for ``dataset`` (``bundles/<dataset>`` of the source tree).

    Raises:
        FileNotFoundError: when the package is not run from a source checkout that has ``bundles/``.
    """
    candidates = [Path(__file__).resolve().parents[1] / "bundles" / dataset, Path.cwd() / "bundles" / dataset]
    for path in candidates:
        if (path / "configs" / "train.json").is_file():
            return path
    raise FileNotFoundError(
        f"cannot find the {dataset} bundle (looked in {[str(c) for c in candidates]}); run from a checkout of plc_monai."
    )


def demo_config() -> Path:
    """``bundles/acdc/configs/demo.json``: the demo's schedule and network size, merged after ``train.json``.

    It trains the ACDC bundle on 2 CPU cores in about 2 minutes (the paper's 3 pseudo-label rounds at
    half resolution, a narrower network, batch 8, N4 off, a seeded random split); every other value
    (losses, lambda, tau, samples per class, augmentations, refresh logic) is the bundle's default.
    It holds plain values only, so ``json.loads`` of it also serves as a dict of bundle overrides
    (``benchmarks/phantom_experiment.py`` does that).

    Raises:
        FileNotFoundError: when the ACDC bundle or its ``demo.json`` is not found.
    """
    path = bundle_dir("acdc") / "configs" / "demo.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; regenerate the bundles with `python -m plc_monai.bundle_gen`.")
    return path


def phantom(
    dataset: str = "acdc",
    out: str = "phantom_acdc",
    num_subjects: int = 12,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    num_slices: int | None = None,
    overwrite: bool = False,
) -> None:
    """Command-line entry: write a SYNTHETIC phantom dataset and print its folder.

    Thin wrapper of :func:`plc_monai.data.phantom.write_phantom_dataset` for ``python -m plc_monai phantom``;
    it prints the output folder instead of returning it, so ``fire`` prints it once.

    Args:
        dataset: ``"acdc"``, ``"prostate"`` or ``"mmwhs"``.
        out: output folder.
        num_subjects: number of subjects.
        seed: random seed.
        image_size: optional in-plane size ``(X, Y)`` for every subject.
        num_slices: optional number of slices for every subject.
        overwrite: allow writing into a non-empty folder that is not a phantom of this dataset.

    Raises:
        ValueError: see :func:`plc_monai.data.phantom.write_phantom_dataset`.
        FileExistsError: see :func:`plc_monai.data.phantom.write_phantom_dataset`.
    """
    from plc_monai.data.phantom import write_phantom_dataset

    folder = write_phantom_dataset(
        dataset,
        out,
        num_subjects=num_subjects,
        seed=seed,
        image_size=None if image_size is None else tuple(image_size),
        num_slices=num_slices,
        overwrite=overwrite,
    )
    print(folder)


def check_data(dataset: str, dataset_dir: str, **reader_options: Any) -> None:
    """Read and validate every volume of ``dataset_dir`` with the ``dataset`` reader; print a summary.

    Exits with an error naming every bad file when the folder does not match the layout.
    """
    from plc_monai.data.readers import read_datalist

    start = time.perf_counter()
    datalist = read_datalist(dataset, dataset_dir, validate=True, **reader_options)
    labeled = sum("label" in e for e in datalist)
    print(f"{len(datalist)} volumes ({labeled} with labels) in {dataset_dir}, all valid "
          f"({time.perf_counter() - start:.1f} s); ids: {[e['id'] for e in datalist]}")


def prepare(bundle: str = "acdc", dataset_dir: str | None = None, cache_dir: str | None = None, **overrides: Any) -> None:
    """Preprocess a dataset once into the bundle's cache (N4, normalisation, resampling, crop).

    Uses the bundle's own ``train.json`` (its ``data`` split and ``train#preprocessing``), so the files
    written are exactly the ones ``run training`` / ``evaluate`` look up: a later run starts without
    recomputing N4. Volumes are processed one at a time and each cache file appears atomically.

    Args:
        bundle: a bundle folder (``bundles/acdc``) or a dataset name (``acdc``, ``prostate``, ``mmwhs``).
        dataset_dir: the dataset folder (overrides the bundle's ``dataset_dir``).
        cache_dir: where to cache (overrides the bundle's ``cache_dir``).
        overrides: any other bundle id, e.g. ``--split random --n4 False``.
    """
    from monai.bundle import ConfigParser

    from plc_monai.data.preprocessing import AtomicPersistentDataset, hash_transforms

    root = Path(bundle) if Path(bundle, "configs").is_dir() else bundle_dir(bundle)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    for key, value in {"dataset_dir": dataset_dir, "cache_dir": cache_dir, **overrides}.items():
        if value is not None:
            parser[key] = value
    data = parser.get_parsed_content("data")
    transform = parser.get_parsed_content("train#preprocessing")
    cache = parser.get_parsed_content("cache_dir")
    entries = data["labeled"] + data["validation"] + data["test"] + data["unlabeled"]
    dataset = AtomicPersistentDataset(entries, transform, cache_dir=cache, hash_transform=hash_transforms, track_meta=True)
    start = time.perf_counter()
    for i, entry in enumerate(entries):
        t0 = time.perf_counter()
        dataset[i]
        print(f"[{i + 1}/{len(entries)}] {entry['id']}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{len(entries)} volumes cached in {cache} ({time.perf_counter() - start:.0f} s)")


def _bundle_command(config_files: list[Path], run_id: str, overrides: dict[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str([str(c) for c in config_files])]
    for key, value in overrides.items():
        # Fire parses values as Python literals: booleans must be True/False (json's "false" is a string)
        text = repr(value) if isinstance(value, bool) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        cmd += [f"--{key}", text]
    return cmd


def _run(cmd: list[str], log_file: Path) -> None:
    """Run a bundle command with :data:`DEMO_MALLOC_TUNABLES`, streaming its output to the terminal and to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + " ".join(cmd[1:]), flush=True)
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={"GLIBC_TUNABLES": DEMO_MALLOC_TUNABLES, **os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if " - INFO - " in line and ("iteration" in line or "best" in line or "refresh" in line or "Metrics" in line):
                print("   " + line.split(" - INFO - ", 1)[-1].rstrip(), flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"bundle command failed (exit {proc.returncode}); full log: {log_file}")


def demo(out: str = "plc_monai_demo", num_subjects: int = 12, seed: int = 0, **overrides: Any) -> None:
    """The embedded default: train and evaluate the ACDC bundle on SYNTHETIC phantom data on a CPU.

    1. writes ``num_subjects`` phantom ACDC subjects (synthetic; the real data needs registration)
       into ``<out>/data``;
    2. runs ``python -m monai.bundle run training`` with ``bundles/acdc/configs/train.json`` and
       ``demo.json`` (:func:`demo_config`: a seeded random split with 1 labeled volume and a short CPU
       schedule), with glibc's malloc told to keep freed memory (:data:`DEMO_MALLOC_TUNABLES`, unless
       ``GLIBC_TUNABLES`` is set);
    3. evaluates the best warm-up model (supervised baseline) and the final model on the phantom
       test subjects with ``evaluate.json`` and prints Dice per structure for both.

    Args:
        out: output folder (data, run, evaluation, logs).
        num_subjects: phantom subjects to generate.
        seed: seed of the phantom data, the split and the training.
        overrides: any bundle id to override, e.g. ``--warmup_iterations 300``.

    The table is also written to ``<out>/eval/comparison.md``.
    """
    from plc_monai.data.phantom import write_phantom_dataset

    out_dir = Path(out).resolve()
    bundle = bundle_dir("acdc")
    data_dir = out_dir / "data"
    if not (data_dir / "PHANTOM_README.txt").exists():
        write_phantom_dataset("acdc", data_dir, num_subjects=num_subjects, seed=seed)
    print(f"SYNTHETIC phantom ACDC data: {data_dir}")
    run_dir = out_dir / "run"
    settings = {
        "split_seed": seed,
        "seed": seed,
        "bundle_root": str(bundle),
        "dataset_dir": str(data_dir / "training"),
        "output_dir": str(run_dir),
        "ckpt_dir": str(run_dir / "models"),
        "cache_dir": str(out_dir / "cache"),
        **overrides,
    }
    train_files = [bundle / "configs" / "train.json", demo_config()]
    start = time.perf_counter()
    _run(_bundle_command(train_files, "training", settings), out_dir / "logs" / "train.log")
    print(f"training finished in {time.perf_counter() - start:.0f} s")
    summaries = {}
    for name, ckpt in (("warmup", "model_warmup.pt"), ("final", "model.pt")):
        eval_settings = {**settings, "ckpt_file": str(run_dir / "models" / ckpt), "eval_dir": str(out_dir / "eval" / name)}
        _run(_bundle_command([*train_files, bundle / "configs" / "evaluate.json"], "run", eval_settings),
             out_dir / "logs" / f"evaluate_{name}.log")
        summaries[name] = json.loads((out_dir / "eval" / name / "summary.json").read_text())
    table = format_comparison(summaries)
    atomic_write_text(out_dir / "eval" / "comparison.md", table + "\n")
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s; results in {out_dir / 'eval'} (SYNTHETIC data)")


def format_comparison(summaries: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of test Dice per structure (mean ± std over test volumes), one column per model."""
    names = list(summaries)
    first = next(iter(summaries.values()))
    structures = [s["structure"] for s in first["structures"]]
    lines = ["| structure | " + " | ".join(f"Dice {n}" for n in names) + " |", "|---" * (len(names) + 1) + "|"]

    def cell(mean: float | None, std: float | None) -> str:
        return "n/a" if mean is None else f"{mean:.3f} ± {std:.3f}"

    for i, name in enumerate(structures):
        row = [cell(summaries[n]["structures"][i]["dice_mean"], summaries[n]["structures"][i]["dice_std"]) for n in names]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    fg = [cell(summaries[n]["mean_foreground_dice"]["mean"], summaries[n]["mean_foreground_dice"]["std"]) for n in names]
    lines.append("| mean foreground | " + " | ".join(fg) + " |")
    return "\n".join(lines)
