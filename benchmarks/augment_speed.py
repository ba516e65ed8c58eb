"""Throughput of the batched augmentations against stock MONAI per-slice dictionary transforms.

For each device (CPU, and CUDA when present) and batch size, times in the same process:

- ``batched``: :class:`plc_monai.data.augment.RandSpatialBatchd` (paper defaults: one of five affine
  options per slice, 3x3-grid elastic with probability 0.5) followed by
  :class:`~plc_monai.data.augment.RandBrightnessContrastBatchd` on the whole ``[B, 1, H, W]`` batch;
- ``monai_loop``: the equivalent stock MONAI chain applied slice by slice in a Python loop:
  ``OneOf(RandRotated, RandZoomd, RandFlipd, RandRotate90d, Identityd)`` (MONAI has no k*45 rotation;
  k*90 stands in), ``Rand2DElasticd`` (control points every ``H / 3`` pixels, ``N(0, 5)`` pixel offsets,
  probability 0.5), ``RandShiftIntensityd`` (+-0.3), ``RandScaleIntensityFixedMeand`` (factor 0.7-1.3
  around the mean) and a clip to ``[0, 1.5]``.

Usage::

    python benchmarks/augment_speed.py --batch-sizes 20 10 --out augment_speed.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import monai
import torch
from monai.transforms import (
    Compose,
    Identityd,
    Lambdad,
    OneOf,
    Rand2DElasticd,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandZoomd,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plc_monai.atomic_files import atomic_write_text  # noqa: E402
from plc_monai.data.augment import RandBrightnessContrastBatchd, RandSpatialBatchd  # noqa: E402

KEYS = ("image", "label")
MODES = ("bilinear", "nearest")


def monai_per_slice_chain(size: int, seed: int) -> Compose:
    """Stock MONAI dictionary transforms doing the paper's augmentation on one ``[1, H, W]`` slice."""
    affine = OneOf(
        [
            RandRotated(KEYS, range_x=math.radians(15), prob=1.0, mode=MODES, padding_mode="zeros"),
            RandZoomd(KEYS, min_zoom=0.95, max_zoom=1.05, prob=1.0, mode=("bilinear", "nearest-exact"),
                      padding_mode="constant"),
            RandFlipd(KEYS, spatial_axis=1, prob=0.5),
            RandRotate90d(KEYS, prob=1.0, max_k=3),
            Identityd(KEYS),
        ]
    )
    chain = Compose(
        [
            affine,
            Rand2DElasticd(KEYS, spacing=size / 3, magnitude_range=(5.0, 5.0), prob=0.5, mode=MODES,
                           padding_mode="zeros"),
            RandShiftIntensityd("image", offsets=0.3, prob=1.0),
            RandScaleIntensityFixedMeand("image", factors=0.3, fixed_mean=True, prob=1.0),
            Lambdad("image", func=lambda x: x.clamp(0.0, 1.5)),
        ]
    )
    chain.set_random_state(seed=seed)
    return chain


def make_batch(batch: int, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A smooth image in ``[0, 1]`` and a 4-class integer label, ``[B, 1, H, W]``."""
    gen = torch.Generator().manual_seed(0)
    image = torch.nn.functional.interpolate(torch.rand(batch, 1, 12, 12, generator=gen), size=(size, size),
                                            mode="bilinear", align_corners=False)
    label = (image * 4).clamp(max=3).long()
    return {"image": image.to(device), "label": label.to(device)}


def time_it(fn: Callable[[], object], device: torch.device, min_time: float, min_iters: int) -> list[float]:
    """Per-call wall times in seconds after two warm-up calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        fn()
    sync()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start_all < min_time:
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def run(batch_sizes: list[int], size: int, devices: list[str], min_time: float, min_iters: int) -> list[dict]:
    """Time both pipelines for every device and batch size."""
    rows = []
    for dev_name in devices:
        device = torch.device(dev_name)
        for batch in batch_sizes:
            data = make_batch(batch, size, device)
            spatial = RandSpatialBatchd(keys=KEYS, mode=MODES).set_random_state(seed=0)
            intensity = RandBrightnessContrastBatchd(keys="image").set_random_state(seed=0)
            chain = monai_per_slice_chain(size, seed=0)
            slices = [{"image": data["image"][b], "label": data["label"][b]} for b in range(batch)]

            def batched() -> object:
                return intensity(spatial(data))

            def monai_loop() -> object:
                return [chain(s) for s in slices]  # the per-slice loop is the baseline being measured

            for name, fn in (("batched", batched), ("monai_loop", monai_loop)):
                times = time_it(fn, device, min_time, min_iters)
                median = statistics.median(times)
                rows.append(
                    {
                        "device": dev_name,
                        "pipeline": name,
                        "batch": batch,
                        "size": size,
                        "iterations": len(times),
                        "median_ms": 1000 * median,
                        "min_ms": 1000 * min(times),
                        "slices_per_s": batch / median,
                        "slices_per_s_best": batch / min(times),
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    """Print one line per (device, batch) with both pipelines and the speed-up."""
    print("median (min) ms per batch of slices; slices/s from the median")
    header = ("device", "batch", "batched ms", "slices/s", "monai loop ms", "slices/s", "speed-up")
    print("{:<6} {:>5} {:>16} {:>9} {:>18} {:>9} {:>9}".format(*header))
    keyed = {(r["device"], r["batch"], r["pipeline"]): r for r in rows}
    for dev, batch in sorted({(r["device"], r["batch"]) for r in rows}, key=lambda k: (k[0], -k[1])):
        ours, base = keyed[(dev, batch, "batched")], keyed[(dev, batch, "monai_loop")]
        ours_ms = f"{ours['median_ms']:.2f} ({ours['min_ms']:.2f})"
        base_ms = f"{base['median_ms']:.1f} ({base['min_ms']:.1f})"
        print(
            f"{dev:<6} {batch:>5} {ours_ms:>16} {ours['slices_per_s']:>9.0f} {base_ms:>18} "
            f"{base['slices_per_s']:>9.0f} {base['median_ms'] / ours['median_ms']:>8.1f}x"
        )


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file, then rename)."""
    atomic_write_text(path, json.dumps(payload, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[20, 10])
    parser.add_argument("--size", type=int, default=192, help="slice height and width")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per case")
    parser.add_argument("--min-iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch_sizes) or args.size < 8:
        parser.error(f"batch sizes must be >= 1 and size >= 8, got {args.batch_sizes} and {args.size}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda given but CUDA is not available")

    rows = run(args.batch_sizes, args.size, devices, args.min_time, args.min_iters)
    print_table(rows)
    if args.out is not None:
        env = {
            "torch": torch.__version__,
            "monai": monai.__version__,
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_avg_1m_before": load_before,
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
        write_json_atomic(args.out, {"environment": env, "results": rows})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
