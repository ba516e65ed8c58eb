"""Wall time, GPU busy and GPU memory of a 10-run results table with K = 1, 2, 4 runs at once on one GPU.

The table: setting tr1, combos c1-c5 x methods {baseline, plc_inter} (10 runs), run by
``python -m plc_monai experiment --parallel K`` once per K, each K into its own folder
(``OUT/k<K>``) with the preprocessing cache shared (``OUT/cache``) and filled by
``python -m plc_monai prepare`` before the first timing, so every K times training and evaluation only.
The schedule is the bundle's (the paper's: 5000 warm-up iterations, 3 rounds of 5000, batch 20)
times ``--iterations_scale``. While each K runs, ``nvidia-smi`` samples every GPU twice a second.

Written to ``OUT/table_speed.json``: per K the wall time, the exit status, GPU utilisation (mean
of the samples and the fraction of samples above 0 %), the largest ``memory.used`` (MiB), each run's
test Dice, and whether every K gave the same Dice per run.

Data: SYNTHETIC phantom ACDC subjects written to ``OUT/data`` with random splits (default), or a
real dataset: ``--dataset_dir DIR --split paper`` or ``--split <folder of tr1_c<k>.json files>``.

Usage (on a GPU machine)::

    # the full table at the paper's schedule: hours per K
    python benchmarks/table_speed.py --out table_speed --k 1,2,4
    # within a ~10 minute GPU slot: 2 % of the iterations (100 warm-up + 3 x 100)
    python benchmarks/table_speed.py --out table_speed --k 1,2,4 --iterations_scale 0.02
    # the script itself on a CPU (no GPU figures; measured 536 s for K=1 on a 2-core CPU, phantom data)
    python benchmarks/table_speed.py --out /tmp/ts --k 1,2 --combos c1 --iterations_scale 0.004 --device cpu
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plc_monai.reports import write_json

REPO = Path(__file__).resolve().parents[1]


def scaled_schedule(bundle: Path, scale: float) -> dict[str, int]:
    """The bundle's warm-up and pseudo-label intervals times ``scale``, as bundle overrides.

    Validation, saving and logging keep their intervals unless the scaled pseudo-label interval is
    shorter (then they take it); the two scaled lengths are rounded to whole validation intervals,
    so the warm-up ends on a validation. ``scale == 1`` returns no override (the paper's schedule).

    Raises:
        ValueError: when ``scale`` is not in (0, 1].
    """
    if not 0 < scale <= 1:
        raise ValueError(f"iterations_scale must be in (0, 1], got {scale}.")
    if scale == 1:
        return {}
    config = json.loads((bundle / "configs" / "train.json").read_text())
    interval = max(1, round(int(config["pseudo_label_interval"]) * scale))
    val = min(int(config["val_interval"]), interval)
    values = {k: max(val, round(int(config[k]) * scale / val) * val) for k in ("warmup_iterations", "pseudo_label_interval")}
    values["val_interval"] = val
    values["log_interval"] = min(int(config["log_interval"]), val)
    values["save_interval"] = min(int(config["save_interval"]), values["pseudo_label_interval"])
    return values


def _gpu_sampler(path: Path) -> subprocess.Popen | None:
    """``nvidia-smi`` writing ``index, utilization.gpu, memory.used, memory.total`` every 500 ms, or ``None`` without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    return subprocess.Popen(
        ["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits",
         "-lms", "500", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gpu_summary(path: Path) -> dict[str, Any] | None:
    """Per GPU: samples, mean utilisation (%), fraction of samples above 0 %, largest and total memory (MiB)."""
    if not path.is_file():
        return None
    per_gpu: dict[str, list[tuple[float, float, float]]] = {}
    for row in csv.reader(path.read_text().splitlines()):
        try:
            index, util, used, total = (c.strip() for c in row)
            per_gpu.setdefault(index, []).append((float(util), float(used), float(total)))
        except ValueError:  # a cut line at the end, or "[N/A]"
            continue
    return {
        gpu: {
            "samples": len(s),
            "util_mean_pct": sum(u for u, _, _ in s) / len(s),
            "busy_fraction": sum(u > 0 for u, _, _ in s) / len(s),
            "mem_used_max_mib": max(m for _, m, _ in s),
            "mem_total_mib": s[0][2],
        }
        for gpu, s in per_gpu.items() if s
    } or None


def _run(cmd: Sequence[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode


def _flags(values: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in values.items():
        flags += [f"--{key}", repr(value) if isinstance(value, (bool, list)) else str(value)]
    return flags


def _run_dice(out: Path) -> dict[str, float | None]:
    path = out / "runs.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        return {f"{r['method']}/{r['combo']}": float(r["mean_foreground_dice"]) if r["mean_foreground_dice"] else None
                for r in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="table_speed", help="output folder")
    parser.add_argument("--k", default="1,2,4", help="runs at once, one table each")
    parser.add_argument("--combos", default="c1,c2,c3,c4,c5")
    parser.add_argument("--methods", default="baseline,plc_inter")
    parser.add_argument("--dataset_dir", default=None, help="a real dataset (default: phantom ACDC in OUT/data)")
    parser.add_argument("--split", default=None, help="paper, random or a split folder (default: random on phantom, paper otherwise)")
    parser.add_argument("--num_subjects", type=int, default=20, help="phantom subjects")
    parser.add_argument("--iterations_scale", type=float, default=1.0, help="fraction of the paper's iterations")
    parser.add_argument("--device", default=None, help="e.g. cpu; default: the bundle's (cuda:0 when there is a GPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run (default: cores / K)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    bundle = REPO / "bundles" / "acdc"
    python = sys.executable
    overrides: dict[str, Any] = scaled_schedule(bundle, args.iterations_scale)
    if args.dataset_dir is None:
        data = out / "data"
        if not (data / "PHANTOM_README.txt").is_file():
            _run([python, "-m", "plc_monai", "phantom", "--dataset", "acdc", "--out", str(data),
                  "--num-subjects", str(args.num_subjects)], out / "setup.log")
        dataset_dir, split = data / "training", args.split or "random"
        overrides["n4"] = False  # the phantoms have no bias field
    else:
        dataset_dir, split = Path(args.dataset_dir).resolve(), args.split or "paper"
    combos = [c for c in args.combos.split(",") if c]
    common = ["--bundle", str(bundle), "--setting", "tr1", "--dataset_dir", str(dataset_dir), "--split", str(split),
              "--cache_dir", str(out / "cache"), *(["--device", args.device] if args.device else []), *_flags(overrides)]

    # the cache, once, outside the timings: prepare reads the same train.json and settings
    setup_start = time.perf_counter()
    for combo in combos:
        if split == "random":
            split_ids = {"split": split, "split_seed": combo.lstrip("c")}
        elif split == "paper":
            split_ids = {"split": split, "combo": combo}
        else:
            split_ids = {"split": str(Path(split).resolve() / f"tr1_{combo}.json")}
        rc = _run([python, "-m", "plc_monai", "prepare", "--bundle", str(bundle), "--dataset_dir", str(dataset_dir),
                   "--cache_dir", str(out / "cache"), "--setting", "tr1", *_flags(split_ids),
                   *_flags({k: v for k, v in overrides.items() if k == "n4"})], out / "setup.log")
        if rc != 0:
            sys.exit(f"prepare failed for {combo} (exit {rc}); see {out / 'setup.log'}")
    record: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()}, {os.cpu_count()} CPU cores",
        "command": " ".join(sys.argv),
        "table": {"setting": "tr1", "combos": combos, "methods": args.methods.split(","), "split": str(split),
                  "dataset_dir": str(dataset_dir), "overrides": overrides, "iterations_scale": args.iterations_scale},
        "cache_seconds": time.perf_counter() - setup_start,
        "k": {},
    }
    for k in [int(v) for v in args.k.split(",") if v]:
        folder = out / f"k{k}"
        cmd = [python, "-m", "plc_monai", "experiment", *common, "--combos", ",".join(combos), "--methods", args.methods,
               "--output_dir", str(folder), "--parallel", str(k), "--figures", "False",
               *(["--threads", str(args.threads)] if args.threads else [])]
        sampler = _gpu_sampler(out / f"gpu_k{k}.csv")
        start = time.perf_counter()
        rc = _run(cmd, folder / "harness.log")
        wall = time.perf_counter() - start
        if sampler is not None:
            sampler.terminate()
            sampler.wait()
        record["k"][str(k)] = {"wall_s": wall, "rc": rc, "command": cmd, "gpu": gpu_summary(out / f"gpu_k{k}.csv"),
                               "dice": _run_dice(folder)}
        print(f"K={k}: {wall:.0f} s, exit {rc}, GPU {record['k'][str(k)]['gpu']}", flush=True)
        write_json(out / "table_speed.json", record)
    dice = [v["dice"] for v in record["k"].values()]
    record["same_dice_for_every_k"] = bool(dice) and all(d == dice[0] and d for d in dice)
    write_json(out / "table_speed.json", record)
    print(json.dumps({k: {"wall_s": round(v["wall_s"]), "rc": v["rc"]} for k, v in record["k"].items()}),
          "same Dice for every K:", record["same_dice_for_every_k"])


if __name__ == "__main__":
    main()
