"""SemiSupervisedTrainer: the two phases, pseudo-labels in the joint batch, best warm-up start, exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceLoss

from plc_monai.checkpointing import ResumeCheckpoint
from plc_monai.data.augment import RandBrightnessContrastBatchd, RandSpatialBatchd
from plc_monai.data.slice_pool import SlicePool
from plc_monai.engines import SemiSupervisedTrainer
from plc_monai.handlers import PseudoLabelRefresh
from plc_monai.losses import PixelContrastiveLoss
from plc_monai.networks import ContrastiveHeadUNet, TrainForward
from plc_monai.pseudo_labels import PseudoLabelStore

SIZE = 32


def _disc_slices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs (class 1) with a dark ring (class 2) on noise: a learnable toy segmentation."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cy = torch.randint(10, 22, (n, 1, 1), generator=gen)
    cx = torch.randint(10, 22, (n, 1, 1), generator=gen)
    r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    labels = torch.where(r < 5, 1, torch.where(r < 8, 2, 0)).to(torch.uint8)
    images = torch.tensor([0.2, 0.9, 0.5])[labels.long()] + 0.05 * torch.randn(n, SIZE, SIZE, generator=gen)
    return images.unsqueeze(1).float(), labels


def _pool(n: int, seed: int, labeled: bool) -> SlicePool:
    images, labels = _disc_slices(n, seed)
    return SlicePool(
        images=images,
        labels=labels if labeled else None,
        volume_index=torch.arange(n) // 4,
        slice_index=torch.arange(n) % 4,
        volume_ids=[f"v{i}" for i in range((n + 3) // 4)],
    )


def make_trainer(total: int = 12, warmup: int = 6, lambda_cont: float = 0.1, seed: int = 0, epoch_length: int = 3,
                 pseudo_in_seg: bool = False, **kwargs) -> tuple[SemiSupervisedTrainer, PseudoLabelRefresh, torch.nn.Module]:
    torch.manual_seed(seed)
    net = ContrastiveHeadUNet(num_classes=3, channels=(4, 8, 8), embedding_dim=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    labeled, unlabeled = _pool(8, 1, True), _pool(8, 2, False)
    store = PseudoLabelStore(len(unlabeled), (SIZE, SIZE), volume_index=unlabeled.volume_index)
    refresh = PseudoLabelRefresh(store, unlabeled.images, net, interval=3, start_iteration=warmup)
    trainer = SemiSupervisedTrainer(
        device="cpu", max_epochs=total // epoch_length, epoch_length=epoch_length, network=net, optimizer=opt,
        seg_loss=DiceLoss(to_onehot_y=True, softmax=True), labeled=labeled, unlabeled=unlabeled,
        pseudo_labels=store, contrastive_loss=PixelContrastiveLoss(3, matching="inter"), warmup_iterations=warmup,
        batch_size=4, labeled_per_batch=2, lambda_cont=lambda_cont, pseudo_labels_in_seg_loss=pseudo_in_seg,
        seg_augmentation=RandSpatialBatchd(), intensity_augmentation=RandBrightnessContrastBatchd(), seed=seed,
        train_handlers=[refresh], **{k: (v(net) if callable(v) and k == "train_forward" else v) for k, v in kwargs.items()},
    )
    return trainer, refresh, net


def test_phases_losses_and_refreshes() -> None:
    trainer, refresh, _ = make_trainer()
    records: list[tuple[str, dict[str, float]]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: records.append((e.phase(), {k: float(v) for k, v in e.state.output.items()})),
    )
    trainer.run()
    assert [phase for phase, _ in records] == ["warmup"] * 6 + ["joint"] * 6
    assert [int(r["iteration"]) for r in refresh.history] == [7, 10]  # start of the joint phase, then every P=3
    assert trainer.joint_started
    for phase, out in records:
        assert all(math.isfinite(v) for v in out.values()), out
        if phase == "warmup":  # Dice only
            assert "cont_loss" not in out and out["loss"] == pytest.approx(out["seg_loss"], abs=1e-6)
        else:  # Dice + lambda * contrastive
            assert out["loss"] == pytest.approx(out["seg_loss"] + 0.1 * out["cont_loss"], abs=1e-5)
    # the warm-up learns the toy segmentation: its Dice loss falls within the six iterations
    warmup = [out["seg_loss"] for _, out in records[:6]]
    assert sum(warmup[3:]) < 0.75 * sum(warmup[:3]), warmup


def test_joint_batch_uses_current_pseudo_labels() -> None:
    trainer, refresh, _ = make_trainer(lambda_cont=0.1)
    seen: list[torch.Tensor] = []
    original = trainer.contrastive_loss

    def spy(embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen.append(labels.detach().clone())
        return original(embedding, labels)

    trainer.contrastive_loss = spy
    trainer.seg_augmentation = None  # keep pixels in place so labels can be compared
    trainer.intensity_augmentation = None
    trainer.run()
    assert len(seen) == 6
    # the unlabeled half of the last batch carries the store's labels, drawn from its current content
    unlabeled_half = seen[-1][2:, 0].to(torch.uint8)
    matches = [(unlabeled_half[i] == refresh.store.labels).flatten(1).all(1).any() for i in range(2)]
    assert all(bool(m) for m in matches)


def test_joint_phase_starts_from_best_warmup_weights() -> None:
    trainer, _, net = make_trainer(total=9, warmup=6)
    marker = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v.clone() for k, v in net.state_dict().items()}
    trainer.best_warmup_state = marker
    loaded: dict[str, torch.Tensor] = {}

    def capture(engine) -> None:
        loaded.update({k: v.clone() for k, v in net.state_dict().items()})

    # runs right after the trainer's own phase switch at the first joint iteration
    trainer.add_event_handler(Events.ITERATION_STARTED(once=7), capture)
    trainer.run()
    key = "seg_head.2.conv.weight"
    torch.testing.assert_close(loaded[key], marker[key])
    assert trainer.optimizer.state  # Adam state rebuilt after the reset


@pytest.mark.parametrize("pseudo_in_seg", [True, False])
def test_self_training_variant_uses_pseudo_labels_in_dice_without_contrastive(pseudo_in_seg) -> None:
    trainer, _, _ = make_trainer(lambda_cont=0.0, pseudo_in_seg=pseudo_in_seg)
    seg_batches: list[tuple[str, int]] = []
    original = trainer.seg_loss

    def spy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seg_batches.append((trainer.phase(), labels.shape[0]))
        return original(logits, labels)

    trainer.seg_loss = spy
    trainer.run()
    assert "cont_loss" not in trainer.state.output
    # warm-up: the 4 labeled slices; joint: the 2 labeled ones, plus the 2 pseudo-labeled ones in self-training
    joint = 4 if pseudo_in_seg else 2
    assert seg_batches == [("warmup", 4)] * 6 + [("joint", joint)] * 6


def _final_weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_resume_mid_joint_phase_gives_identical_weights(tmp_path) -> None:
    # uninterrupted reference run
    trainer, _, net = make_trainer(total=12, warmup=6, seed=3)
    trainer.run()
    reference = _final_weights(net)

    # the same run, stopped after iteration 9 (inside the joint phase), checkpointed, then resumed
    trainer, _, net = make_trainer(total=12, warmup=6, seed=3)
    ckpt = ResumeCheckpoint(tmp_path, {"network": net, "optimizer": trainer.optimizer}, save_interval=9)
    ckpt.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=9), lambda e: e.terminate())
    trainer.run()
    assert (tmp_path / "checkpoint.pt").exists()
    torch.manual_seed(12345)  # a resumed process starts with other RNG states: the checkpoint must restore them

    trainer, refresh, net = make_trainer(total=12, warmup=6, seed=3)
    ResumeCheckpoint(tmp_path, {"network": net, "optimizer": trainer.optimizer}, save_interval=9).attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 12
    assert [int(r["iteration"]) for r in refresh.history] == [7, 10]  # restored history + the refresh after resume
    resumed = _final_weights(net)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)


def test_same_seed_same_losses() -> None:
    def losses(seed: int) -> list[float]:
        trainer, _, _ = make_trainer(total=9, warmup=3, seed=seed)
        values: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: values.append(float(e.state.output["loss"])))
        trainer.run()
        return values

    first, second, other = losses(7), losses(7), losses(8)
    assert first == second
    assert first != other


def test_two_step_variant_pretrains_contrastively_then_finetunes() -> None:
    trainer, _, _ = make_trainer(total=12, warmup=3, seg_weight=0.0, finetune_iterations=3)
    records: list[tuple[str, dict[str, float]]] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: records.append((e.phase(), {k: float(v) for k, v in e.state.output.items()})),
    )
    trainer.run()
    assert [r[0] for r in records] == ["warmup"] * 3 + ["joint"] * 6 + ["finetune"] * 3
    assert trainer.final_phase == "finetune"
    for phase, out in records:
        if phase == "joint":  # contrastive pre-training: the Dice term has weight 0
            assert abs(out["loss"] - 0.1 * out["cont_loss"]) < 1e-5
        else:
            assert "cont_loss" not in out and abs(out["loss"] - out["seg_loss"]) < 1e-6


def test_schedule_longer_than_run_is_rejected() -> None:
    with pytest.raises(ValueError, match="exceed"):
        make_trainer(total=6, warmup=6, finetune_iterations=3)


def test_unwrap_removes_only_parallel_wrappers() -> None:
    """Saved keys lose DataParallel's ``module.`` prefix, but a network's own submodule named ``module`` stays."""
    from plc_monai.runtime import unwrap

    net = torch.nn.Linear(2, 2)
    assert unwrap(torch.nn.DataParallel(net)) is net
    own = torch.nn.Sequential()
    own.module = net
    assert unwrap(own) is own and unwrap(net) is net and unwrap("state") == "state"


def test_train_forward_wrapper_matches_direct_calls() -> None:
    """The DDP path (a TrainForward module computing both heads) trains exactly like the direct path."""
    direct, _, net_a = make_trainer(total=9, warmup=3, seed=5)
    direct.run()
    wrapped, _, net_b = make_trainer(total=9, warmup=3, seed=5, train_forward=TrainForward)
    wrapped.run()
    for (key, a), b in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        if key.startswith("contrastive_head") and ("running" in key or "num_batches" in key):
            continue  # the wrapped path also runs the contrastive head's BN during warm-up (weight 0 in the loss)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
