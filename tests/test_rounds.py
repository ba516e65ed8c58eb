"""Pseudo-labeling rounds: restoring the best model of each round, which model ships, slice filters."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from plc_monai.checkpointing import BestModelPerPhase
from plc_monai.data.transforms import PercentileNormalized
from plc_monai.handlers import predict_labels
from test_engines import make_trainer

BUNDLES = ("acdc", "prostate", "mmwhs")


def _scripted_validation(trainer, net, tmp_path, metrics: dict[int, float], selection: str = "final_phase"):
    """A BestModelPerPhase fed, after every iteration listed in ``metrics``, the scripted validation value."""
    evaluator = SimpleNamespace(state=SimpleNamespace(metrics={}), add_event_handler=lambda *args: None)
    best = BestModelPerPhase(evaluator, net, tmp_path, selection=selection)
    best.attach(trainer)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def validate(engine) -> None:
        it = engine.state.iteration
        if it in metrics:
            evaluator.state.metrics["val_mean_dice"] = metrics[it]
            best(evaluator)
        snapshots[it] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    trainer.add_event_handler(Events.ITERATION_COMPLETED, validate)
    return best, snapshots


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_model_at_each_round(tmp_path, restore: bool) -> None:
    # warm-up 1-6, rounds of 3 iterations: 7-9, 10-12, 13-15; refreshes at 7, 10, 13
    trainer, refresh, net = make_trainer(total=15, warmup=6, round_length=3, restore_best_each_round=restore)
    metrics = {3: 0.5, 6: 0.6, 7: 0.3, 8: 0.9, 9: 0.1, 10: 0.2, 11: 0.4, 12: 0.35, 15: 0.3}
    best, snapshots = _scripted_validation(trainer, net, tmp_path, metrics)
    seen: dict[str, object] = {}

    def at_round_two(engine) -> None:  # runs after the trainer's restore and the refresh handler
        seen["weights"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        seen["adam_steps"] = {int(s["step"]) for s in trainer.optimizer.state.values()}
        seen["labels"] = refresh.store.labels.clone()

    trainer.add_event_handler(Events.ITERATION_STARTED(once=10), at_round_two)
    trainer.run()

    if restore:
        # round 2 continues from iteration 8's model (best of round 1), with its Adam state (2 joint steps)
        assert _same(seen["weights"], snapshots[8]) and not _same(seen["weights"], snapshots[9])
        assert seen["adam_steps"] == {2}
        # and the round-2 pseudo-labels were predicted with that model
        net.load_state_dict(snapshots[8])
        expected = predict_labels(net, refresh.images, batch_size=64)
        assert torch.equal(seen["labels"], expected.to(seen["labels"].dtype))
    else:
        assert _same(seen["weights"], snapshots[9])
        assert seen["adam_steps"] == {3}
    # "best" restarts every round: round 2's best is 0.4 although round 1 reached 0.9
    assert best.rounds["1"] == {"metric": 0.9, "iteration": 8}
    assert best.rounds["2"] == {"metric": 0.4, "iteration": 11}
    assert best.rounds["3"] == {"metric": 0.3, "iteration": 15}
    record = json.loads((tmp_path / "best_models.json").read_text())
    assert record["phases"]["warmup"]["iteration"] == 6 and record["phases"]["joint"]["iteration"] == 8
    assert record["model.pt"]["phase"] == "joint"


@pytest.mark.parametrize("selection, shipped_iteration", [("final_phase", 8), ("all_phases", 6)])
def test_model_selection_over_phases(tmp_path, selection: str, shipped_iteration: int) -> None:
    trainer, _, net = make_trainer(total=12, warmup=6, round_length=3)
    metrics = {6: 0.8, 7: 0.5, 8: 0.7, 9: 0.6, 12: 0.65}
    best, snapshots = _scripted_validation(trainer, net, tmp_path, metrics, selection=selection)
    trainer.run()
    shipped = torch.load(tmp_path / "model.pt", weights_only=True)
    assert _same(shipped, snapshots[shipped_iteration])
    record = json.loads((tmp_path / "best_models.json").read_text())
    assert record["model.pt"]["iteration"] == shipped_iteration
    assert record["model.pt"]["phase"] == ("joint" if selection == "final_phase" else "warmup")
    assert record["selection"] == selection


def test_unknown_selection_and_slice_filter_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="selection"):
        BestModelPerPhase(None, torch.nn.Linear(1, 1), tmp_path, selection="best")
    with pytest.raises(ValueError, match="unlabeled_slices"):
        make_trainer(unlabeled_slices="complete")


def test_all_classes_filter_draws_only_complete_slices() -> None:
    trainer, refresh, _ = make_trainer(total=12, warmup=6, unlabeled_slices="all_classes")
    store = refresh.store
    labels = torch.zeros_like(store.labels)
    labels[:, 2:6, 2:6] = 1
    complete = torch.tensor([1, 4, 6])
    labels[complete, 10:12, 10:12] = 2  # only these slices hold both foreground classes
    store.update(labels)
    drawn = torch.cat([trainer._draw_unlabeled(16) for _ in range(8)])
    assert set(drawn.tolist()) == set(complete.tolist())
    # with no complete slice it falls back to every admitted slice
    store.update(torch.zeros_like(store.labels))
    drawn = torch.cat([trainer._draw_unlabeled(16) for _ in range(8)])
    assert len(set(drawn.tolist())) > 3


def test_percentile_normalisation_clips_to_the_given_range() -> None:
    img = torch.linspace(0.0, 100.0, 1000).reshape(1, 10, 10, 10)
    img[0, 0, 0, :3] = torch.tensor([-80.0, -60.0, -40.0])  # below the 1st percentile, far enough to leave [0, 1.5]
    img[0, -1, -1, -3:] = torch.tensor([200.0, 250.0, 300.0])  # above the 99th
    plain = PercentileNormalized("image")({"image": img})["image"]
    clipped = PercentileNormalized("image", clip=(0.0, 1.5))({"image": img})["image"]
    assert float(plain.max()) > 1.5 and float(plain.min()) < 0.0
    np.testing.assert_allclose(np.asarray(clipped), np.clip(np.asarray(plain), 0.0, 1.5))
    with pytest.raises(ValueError, match="clip"):
        PercentileNormalized("image", clip=(1.0, 0.0))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_and_inference_inputs_share_one_intensity_range(bundle: str) -> None:
    """The batch augmentation clips training images; every other input must be clipped to the same range."""
    train = ConfigParser()
    train.read_config(f"bundles/{bundle}/configs/train.json")
    infer = ConfigParser()
    infer.read_config(f"bundles/{bundle}/configs/inference.json")
    expected = tuple(train.get_parsed_content("intensity_range"))
    assert tuple(train.get_parsed_content("train#intensity_augmentation").clip) == expected
    for parser, key in ((train, "train#preprocessing"), (infer, "preprocessing")):
        norms = [t for t in parser.get_parsed_content(key).transforms if isinstance(t, PercentileNormalized)]
        assert len(norms) == 1 and norms[0].clip == expected, (bundle, key)
