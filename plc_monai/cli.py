"""The commands behind ``python -m plc_monai``: each a thin call into the module that does the work."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text
from plc_monai.reports import format_mean_std, markdown_table

__all__ = ["phantom", "check_data", "prepare", "demo", "bundle_dir", "demo_config", "format_comparison",
           "DEMO_MALLOC_TUNABLES"]

# glibc malloc settings for the demo's bundle processes (freed memory kept for reuse; see
# docs/troubleshooting.md); a GLIBC_TUNABLES of the caller's own wins.
DEMO_MALLOC_TUNABLES = (
    "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647:glibc.malloc.top_pad=536870912"
)
#: the bundles of a source checkout (``pip install -e .``)
SOURCE_BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"


def bundle_dir(bundle: str | os.PathLike) -> Path:
    """The absolute folder of a bundle given as its path (``bundles/acdc``) or as a dataset name (``acdc``: the
    shipped ``bundles/<name>`` of the source tree, else of the working folder); a folder of that name comes first.

    Raises:
        FileNotFoundError: when no candidate holds ``configs/train.json``.
    """
    looked = [Path(bundle).expanduser().resolve()]
    if len(Path(bundle).parts) == 1:  # a dataset name
        looked = list(dict.fromkeys([*looked, SOURCE_BUNDLES_DIR / str(bundle), Path.cwd() / "bundles" / str(bundle)]))
    for path in looked:
        if (path / "configs" / "train.json").is_file():
            return path
    raise FileNotFoundError(f"{str(bundle)!r} is not a plc_monai bundle: no configs/train.json in "
                            f"{[str(p) for p in looked]}; give a bundle folder, or a dataset name in a checkout of "
                            "plc_monai (its bundles/).")


def demo_config() -> Path:
    """``bundles/acdc/configs/demo.json``: the demo's CPU schedule, plain values merged after ``train.json``.

    Raises:
        FileNotFoundError: when the ACDC bundle or its ``demo.json`` is not found.
    """
    path = bundle_dir("acdc") / "configs" / "demo.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; regenerate the bundles with `python bundles/generate.py`.")
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
    """Write a SYNTHETIC phantom dataset with :func:`plc_monai.data.phantom.write_phantom_dataset`; print its folder.

    Args:
        dataset: ``"acdc"``, ``"prostate"`` or ``"mmwhs"``.
        out: output folder.
        num_subjects: number of subjects.
        seed: random seed.
        image_size: optional in-plane size ``(X, Y)`` for every subject.
        num_slices: optional number of slices for every subject.
        overwrite: allow writing into a non-empty folder that is not a phantom of this dataset.
    """
    from plc_monai.data.phantom import write_phantom_dataset

    folder = write_phantom_dataset(dataset, out, num_subjects=num_subjects, seed=seed, image_size=image_size,
                                   num_slices=num_slices, overwrite=overwrite)
    print(folder)


def check_data(dataset: str, dataset_dir: str, **reader_options: Any) -> None:
    """Read and validate every volume of ``dataset_dir`` with the ``dataset`` reader; print a summary.

    Raises an error naming every bad file when the folder does not match the layout.
    """
    from plc_monai.data.readers import read_datalist

    start = time.perf_counter()
    datalist = read_datalist(dataset, dataset_dir, validate=True, **reader_options)
    labeled = sum("label" in e for e in datalist)
    print(f"{len(datalist)} volumes ({labeled} with labels) in {dataset_dir}, all valid "
          f"({time.perf_counter() - start:.1f} s); ids: {[e['id'] for e in datalist]}")


def prepare(
    bundle: str = "acdc", dataset_dir: str | None = None, cache_dir: str | None = None, **overrides: Any
) -> None:
    """Preprocess a dataset once into the bundle's cache (N4, normalisation, resampling, crop).

    Uses the bundle's own ``data`` split and ``train#preprocessing``, so a later run finds every volume cached.

    Args:
        bundle: a bundle folder (``bundles/acdc``) or a dataset name (``acdc``, ``prostate``, ``mmwhs``).
        dataset_dir: the dataset folder (overrides the bundle's ``dataset_dir``).
        cache_dir: where to cache (overrides the bundle's ``cache_dir``).
        overrides: any other bundle id, e.g. ``--split random --n4 False``.
    """
    from plc_monai.data.preprocessing import AtomicPersistentDataset, hash_transforms
    from plc_monai.experiments.runs import bundle_parser

    root = bundle_dir(bundle)
    settings = {"bundle_root": str(root), "dataset_dir": dataset_dir, "cache_dir": cache_dir, **overrides}
    parser = bundle_parser([root / "configs" / "train.json"], {k: v for k, v in settings.items() if v is not None})
    data = parser.get_parsed_content("data")
    transform = parser.get_parsed_content("train#preprocessing")
    cache = parser.get_parsed_content("cache_dir")
    entries = data["labeled"] + data["validation"] + data["test"] + data["unlabeled"]
    dataset = AtomicPersistentDataset(entries, transform, cache, hash_transform=hash_transforms, track_meta=True)
    start = time.perf_counter()
    for i, entry in enumerate(entries):
        t0 = time.perf_counter()
        dataset[i]
        print(f"[{i + 1}/{len(entries)}] {entry['id']}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"{len(entries)} volumes cached in {cache} ({time.perf_counter() - start:.0f} s)")


def _run(cmd: list[str], log_file: Path) -> None:
    """Run a bundle command with :data:`DEMO_MALLOC_TUNABLES`; its output to ``log_file``, progress to the terminal."""
    from plc_monai.experiments.worker import run_logged

    print("$ " + " ".join(cmd[1:]), flush=True)
    run_logged(cmd, log_file, echo=True, env={"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", DEMO_MALLOC_TUNABLES)})


def demo(out: str = "plc_monai_demo", num_subjects: int = 12, seed: int = 0, **overrides: Any) -> None:
    """The embedded default: train and evaluate the ACDC bundle on SYNTHETIC phantom data on a CPU.

    Writes phantom ACDC subjects into ``<out>/data``, trains with ``train.json`` + :func:`demo_config`, evaluates
    the best warm-up model (supervised baseline) and the final model on the test subjects, and prints (and writes
    to ``<out>/eval/comparison.md``) Dice per structure for both.

    Args:
        out: output folder (data, run, evaluation, logs).
        num_subjects: phantom subjects to generate.
        seed: seed of the phantom data, the split and the training.
        overrides: any bundle id to override, e.g. ``--warmup_iterations 300``.
    """
    from plc_monai.data.phantom import write_phantom_dataset
    from plc_monai.experiments.runs import bundle_command

    out_dir = Path(out).resolve()
    bundle = bundle_dir("acdc")
    data_dir = out_dir / "data"
    if not (data_dir / "PHANTOM_README.txt").exists():
        write_phantom_dataset("acdc", data_dir, num_subjects=num_subjects, seed=seed)
    print(f"SYNTHETIC phantom ACDC data: {data_dir}")
    run_dir = out_dir / "run"
    settings = {
        "split_seed": seed, "seed": seed, "bundle_root": str(bundle), "dataset_dir": str(data_dir / "training"),
        "output_dir": str(run_dir), "ckpt_dir": str(run_dir / "models"), "cache_dir": str(out_dir / "cache"),
        **overrides,
    }
    train_files = [bundle / "configs" / "train.json", demo_config()]
    start = time.perf_counter()
    _run(bundle_command(train_files, "training", settings), out_dir / "logs" / "train.log")
    print(f"training finished in {time.perf_counter() - start:.0f} s")
    summaries = {}
    for name, ckpt in (("warmup", "model_warmup.pt"), ("final", "model.pt")):
        eval_dir = out_dir / "eval" / name
        eval_settings = {**settings, "ckpt_file": str(run_dir / "models" / ckpt), "eval_dir": str(eval_dir)}
        _run(bundle_command([*train_files, bundle / "configs" / "evaluate.json"], "run", eval_settings),
             out_dir / "logs" / f"evaluate_{name}.log")
        summaries[name] = json.loads((eval_dir / "summary.json").read_text())
    table = format_comparison(summaries)
    atomic_write_text(out_dir / "eval" / "comparison.md", table + "\n")
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s; results in {out_dir / 'eval'} (SYNTHETIC data)")


def format_comparison(summaries: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of test Dice per structure (mean ± std over test volumes), one column per model."""
    models = list(summaries.values())
    rows = []
    for i, structure in enumerate(models[0]["structures"]):
        cells = [format_mean_std(m["structures"][i]["dice_mean"], m["structures"][i]["dice_std"]) for m in models]
        rows.append([structure["structure"], *cells])
    fg = [format_mean_std(m["mean_foreground_dice"]["mean"], m["mean_foreground_dice"]["std"]) for m in models]
    rows.append(["mean foreground", *fg])
    return "\n".join(markdown_table(["structure", *(f"Dice {name}" for name in summaries)], rows))
