"""The CUDA code paths: loss, network under bf16/channels_last, and a few engine iterations on the GPU.

CI has no GPU, so the whole module is skipped there; run it on a CUDA machine with
``python -m pytest -q tests/test_cuda_paths.py``. What is covered by CPU tests elsewhere (the loss
semantics, the engine's phases) is only cross-checked here: the CUDA result must equal the CPU one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contrastive_reference import reference_loss  # noqa: E402
from test_engines import _disc_slices  # noqa: E402

from plc_monai.data.augment import RandBrightnessContrastBatchd, RandSpatialBatchd  # noqa: E402
from plc_monai.data.slice_pool import SlicePool  # noqa: E402
from plc_monai.engines import SemiSupervisedTrainer  # noqa: E402
from plc_monai.handlers import PseudoLabelRefresh  # noqa: E402
from plc_monai.losses import PixelContrastiveLoss  # noqa: E402
from plc_monai.networks import ContrastiveHeadUNet  # noqa: E402
from plc_monai.pseudo_labels import PseudoLabelStore  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _features_and_labels(batch: int = 4, dim: int = 8, size: int = 12, classes: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, size, size, generator=gen)
    labels = torch.randint(0, classes, (batch, 1, size, size), generator=gen)
    labels[1] = labels[1].clamp_max(2)  # one image without class 3: absent-class handling on the GPU too
    return features, labels


@pytest.mark.parametrize("matching", ["inter", "intra"])
def test_loss_on_cuda_equals_cpu_and_reference(matching: str) -> None:
    features, labels = _features_and_labels()
    loss_fn = PixelContrastiveLoss(4, matching=matching, num_samples=None)  # every pixel: deterministic
    results = {}
    for device in ("cpu", "cuda"):
        feats = features.detach().to(device).requires_grad_(True)
        value = loss_fn(feats, labels.to(device))
        value.backward()
        results[device] = (value.detach().cpu(), feats.grad.cpu())
    expected = reference_loss(features.double(), labels[:, 0], num_classes=4, matching=matching, num_samples=None)
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["cuda"][1], results["cpu"][1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results["cuda"][0].double(), expected, rtol=1e-5, atol=1e-6)


def test_sampled_loss_under_bf16_autocast_is_float32_and_sync_free() -> None:
    """With ``check_inputs=False`` (what the engine uses on CUDA) no call may block on the GPU."""
    features, labels = _features_and_labels(batch=8, dim=16, size=32)
    conv = torch.nn.Conv2d(16, 16, 1).to(CUDA)
    loss_fn = PixelContrastiveLoss(4, matching="inter", num_samples=3, check_inputs=False)
    x, y = features.to(CUDA), labels.to(CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            emb = conv(x)
            value = loss_fn(emb, y)
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert emb.dtype == torch.bfloat16
    assert value.dtype == torch.float32
    assert torch.isfinite(value).item() and value.item() > 0
    assert torch.isfinite(conv.weight.grad).all().item() and conv.weight.grad.abs().sum().item() > 0


def test_network_bf16_channels_last_close_to_fp32() -> None:
    torch.manual_seed(0)
    net = ContrastiveHeadUNet(num_classes=4, channels=(8, 16, 32), embedding_dim=8).to(CUDA).eval()
    x = torch.randn(2, 1, 64, 64, device=CUDA)
    with torch.inference_mode():
        ref_logits, ref_emb = net.forward_train(x)
        fast = net.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, emb = fast.forward_train(x.contiguous(memory_format=torch.channels_last))
    assert logits.shape == (2, 4, 64, 64) and emb.shape == (2, 8, 64, 64)
    # bf16 keeps 8 bits of mantissa: agreement to a few percent of the output scale
    scale = ref_logits.abs().max()
    assert (logits.float() - ref_logits).abs().max() < 0.05 * scale
    assert (logits.argmax(1) == ref_logits.argmax(1)).float().mean() > 0.95


def _disc_pool(n: int, seed: int, labeled: bool) -> SlicePool:
    images, labels = _disc_slices(n, seed)  # the engine tests' toy slices, 32x32
    return SlicePool(
        images=images.to(CUDA),
        labels=labels.to(CUDA) if labeled else None,
        volume_index=(torch.arange(n) // 4).to(CUDA),
        slice_index=(torch.arange(n) % 4).to(CUDA),
        volume_ids=[f"v{i}" for i in range((n + 3) // 4)],
    )


def test_engine_joint_iterations_on_cuda_with_bf16_and_channels_last() -> None:
    torch.manual_seed(0)
    net = ContrastiveHeadUNet(num_classes=3, channels=(8, 16, 16), embedding_dim=8).to(CUDA)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    labeled, unlabeled = _disc_pool(8, 1, True), _disc_pool(8, 2, False)
    store = PseudoLabelStore(len(unlabeled), (32, 32), device=CUDA, volume_index=unlabeled.volume_index)
    refresh = PseudoLabelRefresh(store, unlabeled.images, net, interval=4, start_iteration=4, amp=True)
    losses: list[dict] = []
    trainer = SemiSupervisedTrainer(
        device=CUDA, max_epochs=1, epoch_length=10, network=net, optimizer=opt,
        seg_loss=DiceLoss(to_onehot_y=True, softmax=True), labeled=labeled, unlabeled=unlabeled,
        pseudo_labels=store, contrastive_loss=PixelContrastiveLoss(3, matching="inter", check_inputs=False),
        warmup_iterations=4, batch_size=4, labeled_per_batch=2, lambda_cont=0.1,
        seg_augmentation=RandSpatialBatchd(), intensity_augmentation=RandBrightnessContrastBatchd(),
        amp=True, channels_last=True, seed=0, log_interval=1, train_handlers=[refresh],
    )
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: losses.append({k: float(v) for k, v in e.state.output.items()})
    )
    trainer.run()
    assert trainer.state.iteration == 10
    assert len(refresh.history) >= 1
    assert store.labels.device.type == "cuda"
    assert len(losses) == 10 and all("cont_loss" in d for d in losses[4:])
    assert all(torch.isfinite(torch.tensor(list(d.values()))).all() for d in losses)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items() if v.is_floating_point())
