"""Tests for the native CPU kernels (plc_monai.native) and the loss's use of them."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contrastive_reference import reference_terms  # noqa: E402

from plc_monai import native  # noqa: E402
from plc_monai.losses import PixelContrastiveLoss  # noqa: E402
from plc_monai.native import loader  # noqa: E402


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


# where the kernels can be had, they must be: a compile error in class_kernels.c would otherwise only
# show up as a silent fall-back to the PyTorch path
BUILDABLE_HERE = (
    sys.platform.startswith("linux")
    and platform.machine().lower() in ("x86_64", "amd64")
    and _cpu_has_avx2_fma()
    and shutil.which("cc") is not None
    and os.environ.get("PLC_MONAI_NATIVE", "1") != "0"
)
needs_kernels = pytest.mark.skipif(native.load_class_kernels() is None, reason="native CPU kernels not available here")


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """Forget the loaded kernels, build into an empty cache folder, and restore the state afterwards."""
    monkeypatch.setenv("PLC_MONAI_NATIVE_CACHE", str(tmp_path / "cache"))
    native.reset_class_kernels()
    yield tmp_path / "cache"
    native.reset_class_kernels()


@pytest.mark.skipif(not BUILDABLE_HERE, reason="not x86-64 Linux with AVX2, FMA and a C compiler")
def test_kernels_build_and_load_where_they_can():
    status = native.class_kernels_status()
    assert status["available"], status["reason"]
    assert "OpenMP" in status["reason"]  # the threaded build, on PyTorch's OpenMP runtime


# ---------------------------------------------------------------- kernels against PyTorch
def _labels(batch: int, n: int, low: int, high: int, seed: int) -> torch.Tensor:
    return torch.randint(low, high, (batch, n), generator=torch.Generator().manual_seed(seed)).float()


@needs_kernels
@pytest.mark.parametrize("dim", [1, 4, 5, 16])
@pytest.mark.parametrize("n_pixels", [1, 7, 8, 255, 8 * 1024 + 13])
@pytest.mark.parametrize("n_cls", [1, 3, 8])
def test_class_sums_match_float64_matmul(dim, n_pixels, n_cls):
    g = torch.Generator().manual_seed(n_pixels + dim)
    feats = torch.randn((3, dim, n_pixels), generator=g)
    labels = _labels(3, n_pixels, -1, 9, seed=dim)  # ids outside the class list must not count
    class_ids = torch.arange(n_cls, dtype=torch.float32) * 8 / max(n_cls, 1)  # spread over 0..7
    class_ids = class_ids.round()
    masks = (labels[:, None, :] == class_ids[None, :, None]).double()
    expected = torch.bmm(feats.double(), masks.transpose(1, 2))
    got = native.class_sums(feats, labels, class_ids)
    assert got.dtype == torch.float64 and got.shape == (3, dim, n_cls)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@needs_kernels
def test_class_sums_carry_nan_to_every_class_of_the_channel():
    feats = torch.randn(2, 3, 50)
    feats[1, 2, 17] = float("nan")
    labels = _labels(2, 50, 0, 3, seed=1)
    sums = native.class_sums(feats, labels, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.isnan(sums[1, 2]).all()
    assert torch.isfinite(sums[0]).all() and torch.isfinite(sums[1, :2]).all()


@needs_kernels
@pytest.mark.parametrize("n_pixels", [1, 9, 36864 + 5])
@pytest.mark.parametrize("n_cls", [2, 5, 8])
def test_class_fill_is_a_table_lookup(n_pixels, n_cls):
    g = torch.Generator().manual_seed(n_cls)
    table = torch.randn((4, 3, n_cls), generator=g)
    labels = _labels(4, n_pixels, 0, n_cls, seed=n_pixels)
    expected = torch.gather(table, 2, labels.long()[:, None, :].expand(4, 3, n_pixels))
    assert torch.equal(native.class_fill(table, labels), expected)


@needs_kernels
@pytest.mark.parametrize(("n_pixels", "block"), [(1, 256), (255, 256), (512, 256), (1000, 7), (36864, 256)])
def test_block_counts_count_each_class_per_block(n_pixels, block):
    labels = _labels(3, n_pixels, -1, 5, seed=block)
    class_ids = torch.tensor([0.0, 2.0, 4.0])
    masks = (labels[:, None, :] == class_ids[None, :, None]).long()
    n_blocks = -(-n_pixels // block)
    padded = torch.nn.functional.pad(masks, (0, n_blocks * block - n_pixels))
    expected = padded.view(3, 3, n_blocks, block).sum(-1)
    assert torch.equal(native.block_counts(labels, class_ids, block), expected)


@needs_kernels
def test_results_do_not_depend_on_the_thread_count():
    feats = torch.randn(5, 6, 3001)
    labels = _labels(5, 3001, 0, 4, seed=2)
    class_ids = torch.tensor([1.0, 2.0, 3.0])
    table = torch.randn(5, 6, 4)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((native.class_sums(feats, labels, class_ids), native.class_fill(table, labels)))
    finally:
        torch.set_num_threads(threads)
    for sums, fill in results[1:]:
        assert torch.equal(sums, results[0][0]) and torch.equal(fill, results[0][1])


@needs_kernels
def test_kernels_reject_what_they_cannot_take():
    feats, labels, ids = torch.randn(2, 3, 10), _labels(2, 10, 0, 3, seed=0), torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="features must be a float32 CPU tensor"):
        native.class_sums(feats.double(), labels, ids)
    with pytest.raises(ValueError, match="features must be a contiguous 3D tensor"):
        native.class_sums(feats.transpose(1, 2), labels, ids)
    with pytest.raises(ValueError, match=r"labels must be \[B, N\] = \[2, 10\]"):
        native.class_sums(feats, labels[:, :9].contiguous(), ids)
    with pytest.raises(ValueError, match="class_ids must hold 1 to 8 classes, got 9"):
        native.class_sums(feats, labels, torch.arange(9.0))
    with pytest.raises(ValueError, match="table must hold 1 to 8 classes, got 9"):
        native.class_fill(torch.randn(2, 3, 9), labels)
    with pytest.raises(ValueError, match="block must be a positive int"):
        native.block_counts(labels, ids, 0)


# ---------------------------------------------------------------- the loss on both paths
def _both_paths(num_classes: int, **kwargs) -> tuple[PixelContrastiveLoss, PixelContrastiveLoss]:
    return (PixelContrastiveLoss(num_classes, native_cpu_kernels=True, **kwargs),
            PixelContrastiveLoss(num_classes, native_cpu_kernels=False, **kwargs))


@needs_kernels
@pytest.mark.parametrize("matching", ["intra", "inter"])
@pytest.mark.parametrize("spatial", [(5, 6), (17, 19), (3, 4, 5), (48, 40)])
@pytest.mark.parametrize("num_classes", [2, 4, 8])
@pytest.mark.parametrize("num_samples", [3, None])
def test_native_and_pytorch_paths_agree(matching, spatial, num_classes, num_samples):
    g = torch.Generator().manual_seed(num_classes * 100 + len(spatial))
    features = torch.randn((4, 5, *spatial), generator=g)
    labels = torch.randint(0, num_classes, (4, 1, *spatial), generator=g)
    fast, plain = _both_paths(num_classes, matching=matching, num_samples=num_samples, reduction="none",
                              include_background=num_classes == 2)
    assert fast._use_native(features.device, torch.float32) and not plain._use_native(features.device, torch.float32)
    if num_samples is not None:  # the same draws on both paths, pixel for pixel
        a = fast.sample_anchors(labels, generator=torch.Generator().manual_seed(3))
        b = plain.sample_anchors(labels, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a.pixels[a.valid], b.pixels[b.valid]) and torch.equal(a.valid, b.valid)
    grads = []
    terms = []
    for loss in (fast, plain):
        feats = features.clone().requires_grad_(True)
        t = loss(feats, labels, generator=torch.Generator().manual_seed(5))
        t.mean().backward()
        terms.append(t.detach())
        grads.append(feats.grad)
    torch.testing.assert_close(terms[0], terms[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


@needs_kernels
@pytest.mark.parametrize("matching", ["intra", "inter"])
def test_native_path_matches_the_loop_transcription(matching):
    g = torch.Generator().manual_seed(11)
    features = torch.randn((4, 6, 9, 11), generator=g)
    labels = torch.randint(0, 4, (4, 1, 9, 11), generator=g)
    loss = PixelContrastiveLoss(4, matching=matching, num_samples=None, reduction="none")
    feats = features.clone().requires_grad_(True)
    terms = loss(feats, labels)
    terms.mean().backward()
    feats_ref = features.double().requires_grad_(True)
    ref = torch.stack(reference_terms(feats_ref, labels[:, 0], 4, matching=matching, temperature=0.1,
                                      include_background=False))
    ref.mean().backward()
    torch.testing.assert_close(terms.sort().values.double(), ref.sort().values.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.grad.double(), feats_ref.grad, rtol=1e-4, atol=1e-7)


@needs_kernels
def test_other_inputs_take_the_pytorch_path():
    loss = PixelContrastiveLoss(9)  # more classes than a kernel table holds
    assert not loss._use_native(torch.device("cpu"), torch.float32)
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    labels = torch.randint(0, 9, (2, 1, 6, 6))
    loss(features, labels).backward()
    assert torch.isfinite(features.grad).all()
    assert not PixelContrastiveLoss(4)._use_native(torch.device("cpu"), torch.float64)


# ---------------------------------------------------------------- building and loading
def test_disabled_by_environment(monkeypatch, fresh_loader):
    monkeypatch.setenv("PLC_MONAI_NATIVE", "0")
    assert native.load_class_kernels() is None
    assert native.class_kernels_status() == {"available": False, "reason": "disabled by PLC_MONAI_NATIVE"}
    loss = PixelContrastiveLoss(4)
    assert not loss._use_native(torch.device("cpu"), torch.float32)
    features = torch.randn(2, 4, 6, 6, requires_grad=True)
    loss(features, torch.randint(0, 4, (2, 1, 6, 6))).backward()  # the PyTorch path still works
    assert not fresh_loader.exists()  # nothing was built


@pytest.mark.skipif(not BUILDABLE_HERE, reason="not x86-64 Linux with AVX2, FMA and a C compiler")
def test_failing_compiler_falls_back_with_a_warning_and_leaves_nothing(monkeypatch, fresh_loader, caplog):
    monkeypatch.setenv("CC", shutil.which("false"))
    with caplog.at_level(logging.WARNING, logger="plc_monai.native.loader"):
        assert native.load_class_kernels() is None
    reason = native.class_kernels_status()["reason"]
    assert reason.startswith("build or load failed") and "class_kernels.c" in reason
    assert any("PyTorch path" in r.getMessage() for r in caplog.records)
    assert list(fresh_loader.iterdir()) == []  # no half-written library left behind
    assert not PixelContrastiveLoss(4)._use_native(torch.device("cpu"), torch.float32)


def test_missing_compiler_is_reported(monkeypatch, fresh_loader):
    monkeypatch.setattr(loader, "_compiler", lambda: None)
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        pytest.skip("the platform check answers first here")
    assert native.load_class_kernels() is None
    assert native.class_kernels_status()["reason"] == "no C compiler found ($CC, Python's CC or cc)"


@pytest.mark.skipif(not BUILDABLE_HERE, reason="not x86-64 Linux with AVX2, FMA and a C compiler")
def test_library_is_built_once_and_reused(fresh_loader, monkeypatch):
    assert native.load_class_kernels() is not None
    built = list(fresh_loader.glob("class_kernels_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    calls = []
    real_run = loader.subprocess.run
    monkeypatch.setattr(loader.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    native.reset_class_kernels()
    assert native.load_class_kernels() is not None
    assert calls == [] and built[0].stat().st_mtime_ns == stamp
    assert [p.name for p in fresh_loader.iterdir()] == [built[0].name]


def test_command_line_reports_the_state(tmp_path):
    import subprocess

    env = {**os.environ, "PLC_MONAI_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-m", "plc_monai", "kernels"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "disabled by PLC_MONAI_NATIVE" in done.stdout and "available" in done.stdout
    if BUILDABLE_HERE:
        env = {**os.environ, "PLC_MONAI_NATIVE_CACHE": str(tmp_path)}
        env.pop("PLC_MONAI_NATIVE", None)
        done = subprocess.run([sys.executable, "-m", "plc_monai", "kernels"], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0 and "loaded from" in done.stdout and str(tmp_path) in done.stdout, done.stdout


@pytest.mark.skipif(not BUILDABLE_HERE, reason="not x86-64 Linux with AVX2, FMA and a C compiler")
def test_cpu_without_avx2_is_refused(monkeypatch, fresh_loader):
    monkeypatch.setattr(loader.ClassKernels, "cpu_supported", lambda self: False)
    assert native.load_class_kernels() is None
    assert native.class_kernels_status()["reason"] == "this CPU lacks AVX2 or FMA"
    with pytest.raises(RuntimeError, match="not available: this CPU lacks AVX2 or FMA"):
        native.class_fill(torch.zeros(1, 1, 2), torch.zeros(1, 4))
