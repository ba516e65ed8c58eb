"""Forward + backward time of PixelContrastiveLoss against the loop transcription, at the paper's size.

Default problem: B=20 images of 192x192, D=16 embedding channels, C=4 classes (ACDC), 3 anchors per
(image, class), "inter" and "intra" matching. Both implementations draw their own anchors.

Usage::

    python benchmarks/loss_speed.py --device cpu --repeats 10 --out loss_speed.json
    python benchmarks/loss_speed.py --device all        # CPU, then CUDA when available
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647 \
        python benchmarks/loss_speed.py --device cpu      # freed memory kept for reuse (docs/troubleshooting.md)

The loop transcription (``tests/contrastive_reference.py``) takes seconds per call on a small CPU, so it
runs ``--loop-repeats`` times (default 2); the vectorised loss runs ``--repeats`` times after
``--warmup`` calls. Medians are reported; the speed ratio is median(loop) / median(vectorised).

Both run under the CPU allocator setting the process was started with. With glibc's defaults every
47 MiB gradient gets fresh pages, which the kernel zeroes on first touch (about 8 ms per call on a
2-core VM, for both implementations); ``GLIBC_TUNABLES`` as above keeps freed memory for reuse. The
JSON records the setting (``cpu_allocator``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from contrastive_reference import reference_loss  # noqa: E402

from plc_monai.atomic_files import atomic_write_text  # noqa: E402
from plc_monai.losses import PixelContrastiveLoss  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_case(args: argparse.Namespace, device: torch.device, matching: str) -> dict:
    """Time both implementations for one device and matching scheme."""
    gen = torch.Generator().manual_seed(args.seed)
    features = torch.randn((args.batch, args.dim, args.size, args.size), generator=gen).to(device)
    labels = torch.randint(0, args.classes, (args.batch, 1, args.size, args.size), generator=gen).to(device)
    features.requires_grad_(True)
    loss = PixelContrastiveLoss(args.classes, matching=matching, num_samples=args.num_samples)

    def vectorised() -> None:
        features.grad = None
        loss(features, labels).backward()

    def loop() -> None:
        features.grad = None
        value = reference_loss(features, labels[:, 0], args.classes, matching, 0.1, False, num_samples=args.num_samples)
        value.backward()

    load_before = _load()
    vec = _time(vectorised, device, args.repeats, args.warmup)
    ref = _time(loop, device, args.loop_repeats, 0)
    vec_after = _time(vectorised, device, args.repeats, 0)  # again after the loop, to expose drifting load
    vec_all = vec + vec_after
    result = {
        "device": str(device),
        "matching": matching,
        "vectorised_ms_median": 1e3 * statistics.median(vec_all),
        "vectorised_ms_min": 1e3 * min(vec_all),
        "loop_ms_median": 1e3 * statistics.median(ref),
        "loop_ms_min": 1e3 * min(ref),
        "vectorised_runs": len(vec_all),
        "loop_runs": len(ref),
        "load_average_before": load_before,
        "load_average_after": _load(),
    }
    result["speedup_median"] = result["loop_ms_median"] / result["vectorised_ms_median"]
    return result


def machine_info(devices: list[torch.device]) -> dict:
    """What the numbers were measured on."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "processor": processor,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if any(d.type == "cuda" for d in devices):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def malloc_setting() -> str:
    """The glibc malloc tunables this process was started with (``GLIBC_TUNABLES``), or ``"glibc defaults"``."""
    return os.environ.get("GLIBC_TUNABLES") or "glibc defaults"


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (temporary file, then rename)."""
    atomic_write_text(path, json.dumps(payload, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="all", help="cpu, cuda, cuda:N or all (CPU and, if present, CUDA)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of the vectorised loss (x2)")
    parser.add_argument("--loop-repeats", type=int, default=2, help="timed calls of the loop transcription")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=3)
    parser.add_argument("--matching", nargs="+", default=["inter", "intra"], choices=["inter", "intra"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads for both implementations (default: torch's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.loop_repeats < 1 or args.warmup < 0:
        parser.error("--repeats and --loop-repeats must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    if args.device == "all":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
        if devices[0].type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine.")
    results = [run_case(args, device, m) for device in devices for m in args.matching]
    payload = {
        "problem": {
            "batch": args.batch,
            "dim": args.dim,
            "spatial": [args.size, args.size],
            "classes": args.classes,
            "num_samples": args.num_samples,
        },
        "cpu_allocator": malloc_setting(),
        "machine": machine_info(devices),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
    }
    header = f"{'device':8s} {'matching':8s} {'vectorised ms':>14s} {'loop ms':>10s} {'speed-up':>9s}  load avg"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['device']:8s} {r['matching']:8s} {r['vectorised_ms_median']:14.1f} {r['loop_ms_median']:10.0f} "
            f"{r['speedup_median']:8.0f}x  {r['load_average_before']}"
        )
    print(f"(medians; B={args.batch}, D={args.dim}, {args.size}x{args.size}, C={args.classes}, "
          f"S={args.num_samples}; {payload['machine']['processor']}, {payload['machine']['cpu_count']} CPUs; "
          f"CPU allocator {payload['cpu_allocator']})")
    if args.out is not None:
        write_json_atomic(args.out, payload)
        print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
