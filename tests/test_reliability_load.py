"""Memory under load on CPU: a pseudo-label refresh over 100 volumes and bundle inference over 100 files.

Peak memory is read from ``/proc`` (``VmHWM``, reset through ``/proc/self/clear_refs``; ``VmRSS``
of the inference subprocess sampled while it runs). Volumes are small but large enough that keeping
one copy of each volume would exceed the tolerances.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from plc_monai.handlers import PseudoLabelRefresh
from plc_monai.networks import ContrastiveHeadUNet
from plc_monai.pseudo_labels import PseudoLabelStore

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


def _status_kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _refresh_peak(refresh: PseudoLabelRefresh) -> tuple[int, int]:
    """(peak RSS above the RSS before the refresh, RSS after it) in bytes."""
    before = _status_kb("VmRSS") * 1024
    _reset_peak()
    refresh.refresh()
    return _status_kb("VmHWM") * 1024 - before, _status_kb("VmRSS") * 1024


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster, above all on a busy CPU
    yield
    torch.set_num_threads(threads)


def test_pseudo_label_refresh_over_100_volumes_does_not_grow(tmp_path, one_thread):
    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable: cannot reset the peak RSS")
    torch.manual_seed(0)
    num_classes = 4
    net = ContrastiveHeadUNet(num_classes=num_classes, channels=(4, 8), embedding_dim=4)
    slices, size = 4, 32

    def build(volumes: int) -> PseudoLabelRefresh:
        n = volumes * slices
        images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(volumes))
        store = PseudoLabelStore(n, (size, size), volume_index=torch.arange(n) // slices)
        return PseudoLabelRefresh(store, images, net, interval=1, batch_size=16)  # full batches in both sizes

    small, large = build(10), build(100)
    _refresh_peak(small)  # first call: allocator and kernel warm-up
    peak_small, _ = _refresh_peak(small)
    rounds = 10
    peaks, after = zip(*(_refresh_peak(large) for _ in range(rounds)))
    logits_bytes = num_classes * 4 * 100 * slices * size * size  # float32 logits of every slice of one refresh
    # repeated refreshes: over 8 further refreshes the resident set and the peak grow by less than what a
    # single refresh would leave behind if it kept its logits (allocator noise is a few MB)
    assert after[-1] - min(after[1:]) < logits_bytes, [round(a / MB, 1) for a in after]
    assert max(peaks[2:]) - peaks[1] < logits_bytes, [round(p / MB, 1) for p in peaks]
    # 10x more volumes: the peak grows with the byte-sized labels of the extra slices, not with their float
    # logits (num_classes float32 per pixel), which a refresh that kept every batch's output would hold
    extra_pixels = (100 - 10) * slices * size * size
    growth = peaks[-1] - peak_small
    assert growth < num_classes * 4 * extra_pixels, (growth / MB, num_classes * 4 * extra_pixels / MB)
    assert large.store.version == rounds and len(large.history) == rounds


def _write_volumes(folder: Path, count: int, shape: tuple[int, int, int]) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    affine = np.diag([1.5, 1.5, 8.0, 1.0])
    for i in range(count):
        data = (rng.random(shape, dtype=np.float32) * 100).astype(np.float32)
        nib.save(nib.Nifti1Image(data, affine), str(folder / f"case_{i:03d}.nii.gz"))


@pytest.mark.slow
def test_bundle_inference_over_100_volumes_keeps_memory_flat(tmp_path):
    count, shape = 100, (64, 64, 8)
    inputs, out = tmp_path / "inputs", tmp_path / "predictions"
    _write_volumes(inputs, count, shape)
    torch.manual_seed(0)
    model = ContrastiveHeadUNet(num_classes=4, channels=(4, 8), embedding_dim=16)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(REPO / "bundles/acdc/configs/inference.json"),
        "--dataset_dir", str(inputs), "--output_dir", str(out), "--ckpt_file", str(tmp_path / "model.pt"),
        "--crop_size", "32", "--spacing_mm", "3.0", "--channels", "[4,8]", "--n4", "False",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: tiny convolutions, possibly a busy CPU
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[int, int]] = []  # (volumes written, RSS bytes)

    def sample() -> None:
        while proc.poll() is None:
            try:
                rss = _status_kb("VmRSS", proc.pid) * 1024
                done = len(list(out.glob("*.nii.gz"))) if out.is_dir() else 0
            except (OSError, KeyError):
                break
            samples.append((done, rss))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    log, _ = proc.communicate(timeout=300)
    sampler.join()
    assert proc.returncode == 0, log[-3000:]
    assert len(list(out.glob("*.nii.gz"))) == count
    early = [rss for done, rss in samples if 10 <= done <= 25]
    late = [rss for done, rss in samples if done >= 85]
    assert early and late, f"too few samples: {samples[:5]} ... {samples[-5:]}"
    volume_bytes = int(np.prod(shape)) * 4
    growth = max(late) - max(early)
    # ~70 volumes between the two windows: keeping even one float32 copy of each would add ~70 volumes
    assert growth < 20 * volume_bytes, (growth / MB, volume_bytes / MB)
