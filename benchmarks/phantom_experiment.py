"""Baseline vs self-training vs the proposed method on SYNTHETIC phantom ACDC data, on a CPU.

A reduced-size, reduced-schedule run of the experiment harness that fits in about half an hour on
2 CPU cores: phantom ACDC subjects, random splits with 1 labeled volume (one split seed per combo),
the demo's network size and schedule (``bundles/acdc/configs/demo.json``, see
:func:`plc_monai.cli.demo_config`) on the demo's field of view sampled at 64 x 64 (4.1 mm) instead of
96 x 96 (2.734 mm), one CPU thread per run. Writes the harness's tables and figures to ``--out``.
Re-running the same command skips finished runs.
``--parallel K`` runs K runs at once (local slots of the harness); with the same ``--threads`` each
run computes the same numbers as with ``--parallel 1``.

Phantom results say nothing about the real datasets: the phantoms are analytic shapes with noise.

Usage::

    python benchmarks/phantom_experiment.py --out phantom_experiment --combos c1,c2,c3
    python benchmarks/phantom_experiment.py --out phantom_k2 --combos c1,c2 --methods baseline,plc_inter --parallel 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from plc_monai.cli import bundle_dir, demo_config
from plc_monai.data.phantom import write_phantom_dataset
from plc_monai.experiments.harness import run_experiment
from plc_monai.experiments.launch import LaunchOptions
from plc_monai.experiments.runs import ExperimentSpec

#: bundle ids of the benchmark: the demo's schedule and network (``demo.json``, plain values), minus what the
#: harness sets per run, on a 64 x 64 crop at 4.1 mm (the demo's field of view with 2.25 times fewer pixels)
BENCHMARK_OVERRIDES = {
    **{k: v for k, v in json.loads(demo_config().read_text(encoding="utf-8")).items() if k not in ("split", "setting")},
    "crop_size": 64,
    "spacing_mm": 4.1,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="phantom_experiment", help="output folder (data, runs, results)")
    parser.add_argument("--combos", default="c1,c2,c3", help="split seeds as combos: c1,c2,... (seed = number)")
    parser.add_argument("--methods", default="baseline,self_training,plc_inter")
    parser.add_argument("--num_subjects", type=int, default=12, help="phantom ACDC subjects")
    parser.add_argument("--data_seed", type=int, default=0, help="seed of the phantom data")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (1 avoids oversubscription)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (local slots)")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    data = out / "data"
    if not (data / "PHANTOM_README.txt").is_file():
        write_phantom_dataset("acdc", data, num_subjects=args.num_subjects, seed=args.data_seed)
    start = time.perf_counter()
    spec = ExperimentSpec(
        bundle_dir("acdc"),
        "tr1",
        [c for c in args.combos.split(",") if c],
        [m for m in args.methods.split(",") if m],
        data / "training",
        out,
        split="random",
        seed=args.seed,
        overrides=BENCHMARK_OVERRIDES,
        device="cpu",
    )
    result = run_experiment(spec, LaunchOptions(parallel=args.parallel, threads=args.threads))
    print(f"benchmark finished in {time.perf_counter() - start:.0f} s; tables in {result['files']['markdown']}")


if __name__ == "__main__":
    main()
