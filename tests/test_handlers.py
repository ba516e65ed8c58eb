"""PseudoLabelRefresh and PseudoLabelStore on a real Ignite engine, with DataLoader workers and checkpoints."""

from __future__ import annotations

import math

import nibabel as nib
import pytest
import torch
from ignite.engine import Engine

from plc_monai.handlers import PseudoLabelRefresh, predict_labels
from plc_monai.pseudo_labels import PseudoLabelDataset, PseudoLabelStore


class ThresholdNet(torch.nn.Module):
    """Two-class logits ``[-(x - t), x - t]``: the label is ``x > t``; ``t`` is a parameter we move."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(threshold))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-(x - self.t), x - self.t], dim=1)


def _images(n: int = 6, size: int = 16) -> torch.Tensor:
    return torch.linspace(0, 1, n * size * size).reshape(n, 1, size, size)


def test_predict_labels_restores_training_mode_and_matches_threshold() -> None:
    net = ThresholdNet(0.3).train()
    images = _images()
    labels = predict_labels(net, images, batch_size=4)
    assert net.training
    assert labels.dtype == torch.uint8 and labels.shape == (6, 16, 16)
    torch.testing.assert_close(labels, (images[:, 0] > 0.3).to(torch.uint8))


def test_fires_at_joint_start_and_every_interval() -> None:
    net = ThresholdNet()
    store = PseudoLabelStore(6, (16, 16))
    handler = PseudoLabelRefresh(store, _images(), net, interval=4, start_iteration=3, num_refreshes=2)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run(range(20), max_epochs=1)
    # refreshes before iterations 4 (= start_iteration + 1) and 8; num_refreshes caps it at two
    assert [int(r["iteration"]) for r in handler.history] == [4, 8]
    assert store.version == 2
    assert engine.state.metrics["pseudo_label_changed_fraction"] == 0.0  # same network twice: nothing changed


def test_changed_fraction_and_labels_follow_the_network() -> None:
    net = ThresholdNet(0.5)
    images = _images()
    store = PseudoLabelStore(6, (16, 16))
    handler = PseudoLabelRefresh(store, images, net, interval=1)
    first = handler.refresh()
    assert first["changed_fraction"] == 1.0
    with torch.no_grad():
        net.t.fill_(0.25)
    second = handler.refresh()
    expected = float(((images > 0.25) & (images <= 0.5)).float().mean())
    assert math.isclose(second["changed_fraction"], expected, rel_tol=1e-6)
    torch.testing.assert_close(store.labels, (images[:, 0] > 0.25).to(torch.uint8))


def test_dataloader_workers_see_refreshed_labels() -> None:
    """Worker processes forked before a refresh must not keep a stale copy of the pseudo-labels."""
    net = ThresholdNet(2.0)  # everything background at first
    images = _images()
    store = PseudoLabelStore(6, (16, 16))
    handler = PseudoLabelRefresh(store, images, net, interval=1)
    handler.refresh()
    loader = torch.utils.data.DataLoader(
        PseudoLabelDataset(images, store), batch_size=6, num_workers=2, persistent_workers=True
    )
    before = next(iter(loader))["label"]
    assert int(before.sum()) == 0
    with torch.no_grad():
        net.t.fill_(0.5)
    handler.refresh()
    after = next(iter(loader))["label"]  # same persistent workers, forked before the refresh
    torch.testing.assert_close(after[:, 0], (images[:, 0] > 0.5).long())


def test_state_survives_checkpoint_round_trip(tmp_path) -> None:
    net = ThresholdNet(0.4)
    images = _images()
    store = PseudoLabelStore(6, (16, 16))
    handler = PseudoLabelRefresh(store, images, net, interval=5, quality_threshold=0.5, num_classes=2)
    handler.refresh()
    torch.save(handler.state_dict(), tmp_path / "ckpt.pt")

    fresh_store = PseudoLabelStore(6, (16, 16))
    fresh = PseudoLabelRefresh(fresh_store, images, ThresholdNet(0.9), interval=5, quality_threshold=0.5, num_classes=2)
    fresh.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert fresh_store.version == 1
    torch.testing.assert_close(fresh_store.labels, store.labels)
    assert fresh.history == handler.history
    # the quality filter's random transforms continue from the same RNG state
    assert torch.equal(fresh.generator.get_state(), handler.generator.get_state())

    wrong = PseudoLabelStore(5, (16, 16))
    with pytest.raises(ValueError, match="shape"):
        wrong.load_state_dict(store.state_dict())


class PositionDependentNet(torch.nn.Module):
    """Threshold at 0.5 plus a +-0.3 checkerboard of the pixel position: not equivariant to any warp.

    A high-contrast image (values 0 and 1) keeps its labels whatever the position term does; an image
    with values near the threshold gets labels set by the checkerboard, which rotation, scaling and
    flipping move, so predictions under two random transforms disagree.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        board = 0.3 * torch.sign(torch.sin(4 * math.pi * xx) * torch.sin(4 * math.pi * yy))
        fg = x - 0.5 + board
        return torch.cat([-fg, fg], dim=1)


def test_quality_filter_rejects_volumes_whose_predictions_are_unstable() -> None:
    size = 32
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.4).float()
    gen = torch.Generator().manual_seed(0)
    near_threshold = 0.5 + 0.1 * (torch.rand(size, size, generator=gen) - 0.5)
    images = torch.stack([disc, disc, near_threshold, near_threshold]).unsqueeze(1)
    store = PseudoLabelStore(4, (size, size), volume_index=torch.tensor([0, 0, 1, 1]))
    handler = PseudoLabelRefresh(
        store, images, PositionDependentNet(), interval=1, quality_threshold=0.8, num_classes=2, seed=4
    )
    record = handler.refresh()
    assert store.keep.tolist() == [True, True, False, False]
    assert record["kept_fraction"] == 0.5
    # with the filter off every slice is kept
    handler.quality_threshold = 0.0
    handler.refresh()
    assert bool(store.keep.all())


def test_writes_pseudo_labels_as_nifti(tmp_path) -> None:
    images = _images()
    store = PseudoLabelStore(6, (16, 16), volume_index=torch.tensor([0, 0, 0, 1, 1, 1]))
    handler = PseudoLabelRefresh(store, images, ThresholdNet(0.5), output_dir=tmp_path, volume_names=["a", "b"])
    handler.refresh()
    vol = nib.load(tmp_path / "round_1" / "b.nii.gz").get_fdata()
    assert vol.shape == (16, 16, 3)
    torch.testing.assert_close(torch.from_numpy(vol).permute(2, 0, 1).to(torch.uint8), store.labels[3:])
    # one file per volume and nothing else: no temporary file of the atomic writes is left behind
    assert sorted(p.name for p in (tmp_path / "round_1").iterdir()) == ["a.nii.gz", "b.nii.gz"]


def test_argument_validation() -> None:
    store = PseudoLabelStore(6, (16, 16))
    with pytest.raises(ValueError, match="interval"):
        PseudoLabelRefresh(store, _images(), ThresholdNet(), interval=0)
    with pytest.raises(ValueError, match="6 unlabeled images|store holds"):
        PseudoLabelRefresh(store, _images(n=5), ThresholdNet())
    with pytest.raises(ValueError, match="num_classes"):
        PseudoLabelRefresh(store, _images(), ThresholdNet(), quality_threshold=0.5)
