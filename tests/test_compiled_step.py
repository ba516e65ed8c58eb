"""The graph-safe contrastive loss and the trainer's ``compile_step``.

On a CPU, ``torch.compile(backend="aot_eager", fullgraph=True)`` traces the code into one graph (it
fails on any graph break: a host read of a device value, a data-dependent shape) and runs the traced
ops eagerly, so values and gradients can be compared with the eager code exactly; inductor's code
generation takes minutes on a small CPU and is left to the CUDA test at the end.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from monai.losses import DiceLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contrastive_reference import reference_loss  # noqa: E402
from test_engines import SIZE, _pool  # noqa: E402
from test_losses import _reference_anchors  # noqa: E402

from plc_monai._ignite import Events  # noqa: E402
from plc_monai.compiled_step import COMPILE_DEFAULTS, CompiledLosses, CompiledOptimizerStep  # noqa: E402
from plc_monai.dice import GraphSafeDiceLoss  # noqa: E402
from plc_monai.data.augment import RandBrightnessContrastBatchd, RandSpatialBatchd  # noqa: E402
from plc_monai.engines import SemiSupervisedTrainer  # noqa: E402
from plc_monai.handlers import PseudoLabelRefresh, predict_labels  # noqa: E402
from plc_monai.losses import PixelContrastiveLoss  # noqa: E402
from plc_monai.monitoring import DegenerateBatchMonitor  # noqa: E402
from plc_monai.networks import ContrastiveHeadUNet  # noqa: E402
from plc_monai.pseudo_labels import PseudoLabelStore  # noqa: E402

TRACE = {"backend": "aot_eager", "fullgraph": True, "dynamic": False}


def _features_and_labels(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``[4, 6, 10, 12]`` float64 features and ``[4, 1, 10, 12]`` labels of 4 classes, two images missing some."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 6, 10, 12, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (4, 1, 10, 12), generator=gen)
    labels[1] = labels[1].clamp_max(1)  # only background and class 1: classes 2, 3 absent (masked, not dropped)
    labels[2][labels[2] == 3] = 0
    return features, labels


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("matching", ["intra", "inter"])
def test_static_loss_is_one_graph_with_eager_and_reference_values_and_gradients(matching: str) -> None:
    features, labels = _features_and_labels()
    loss = PixelContrastiveLoss(4, matching=matching, temperature=0.2, check_inputs=False)
    traced = torch.compile(loss, **TRACE)
    results = []
    for fn in (loss, traced):
        feats = features.clone().requires_grad_(True)
        torch.manual_seed(7)  # the global RNG seeded as a Generator seeded 7: the same anchors
        value = fn(feats, labels)
        value.backward()
        results.append((value.detach(), feats.grad))
    anchors = _reference_anchors(loss, labels, seed=7)
    feats_ref = features.clone().requires_grad_(True)
    expected = reference_loss(feats_ref, labels[:, 0], 4, matching=matching, temperature=0.2, anchors=anchors)
    expected.backward()
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
    torch.testing.assert_close(results[1][0], expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[1][1], feats_ref.grad, rtol=1e-8, atol=1e-10)


def test_static_loss_draws_new_anchors_on_every_call() -> None:
    features, labels = _features_and_labels()
    traced = torch.compile(PixelContrastiveLoss(4, check_inputs=False), **TRACE)
    values = {float(traced(features, labels)) for _ in range(4)}
    assert len(values) > 1


def test_value_checks_read_the_device_and_are_not_one_graph() -> None:
    features, labels = _features_and_labels()
    traced = torch.compile(PixelContrastiveLoss(4, check_inputs=True), **TRACE)
    with pytest.raises(Exception, match="(?i)graph break|data.dependent|unsupported|item"):
        traced(features, labels)


def _sgd(params) -> torch.optim.Optimizer:
    """Plain SGD: its compiled update is the eager one to the bit on a CPU (compiled Adam computes its bias
    correction in float32 tensors where eager Adam uses Python floats, a rounding-level difference that a
    pseudo-label refresh can amplify; it is compared with eager Adam on its own below)."""
    return torch.optim.SGD(params, lr=0.1)


def _trainer(compile_step: bool, handlers: list | None = None, device: str = "cpu", optimizer=_sgd,
             **kwargs) -> tuple[SemiSupervisedTrainer, PseudoLabelRefresh]:
    """12 iterations (6 warm-up, 6 joint), refresh every 3, on ``[4, 1, 32, 32]`` batches.

    ``compile_step`` traces with ``aot_eager`` on the CPU and uses the defaults (CUDA graphs) on CUDA.
    """
    torch.manual_seed(0)
    net = ContrastiveHeadUNet(num_classes=3, channels=(4, 8, 8), embedding_dim=8).to(device)
    labeled, unlabeled = _pool(8, 1, True).to(device), _pool(8, 2, False).to(device)
    store = PseudoLabelStore(len(unlabeled), (SIZE, SIZE), device=device, volume_index=unlabeled.volume_index)
    refresh = PseudoLabelRefresh(store, unlabeled.images, net, interval=3, start_iteration=6)
    options = {"contrastive_loss": PixelContrastiveLoss(3, check_inputs=False), "seg_loss": GraphSafeDiceLoss(), **kwargs}
    trainer = SemiSupervisedTrainer(
        device=device, max_epochs=4, epoch_length=3, network=net, optimizer=optimizer(net.parameters()),
        labeled=labeled, unlabeled=unlabeled, pseudo_labels=store,
        warmup_iterations=6, batch_size=4, labeled_per_batch=2, lambda_cont=0.1,
        seg_augmentation=RandSpatialBatchd(), intensity_augmentation=RandBrightnessContrastBatchd(),
        compile_step=compile_step, compile_options={"backend": "aot_eager"} if compile_step and device == "cpu" else None,
        train_handlers=[refresh, *(handlers or [])], **options,
    )
    return trainer, refresh


def _run_with_validation(compile_step: bool) -> dict:
    """Run :func:`_trainer` with a validation-like prediction every 2 iterations and the best warm-up restart."""
    monitor = DegenerateBatchMonitor(3, interval=2)
    trainer, refresh = _trainer(compile_step, [monitor])
    losses, predictions = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(
        {k: float(v) for k, v in e.state.output.items()}))
    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=2), lambda e: predictions.append(
        predict_labels(e.network, e.labeled.images[:2])))
    # the joint phase starts from the weights after iteration 3, loaded in place into the network
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: setattr(
        e, "best_warmup_state", copy.deepcopy(e.network.state_dict())))
    trainer.run()
    return {"losses": losses, "predictions": predictions, "refresh": refresh.history, "store": refresh.store.labels,
            "weights": trainer.network.state_dict(), "monitor_checks": monitor._checked_version}


def test_compiled_step_trains_like_the_eager_step_around_refresh_validation_and_restarts() -> None:
    eager, traced = _run_with_validation(False), _run_with_validation(True)
    assert len(traced["losses"]) == 12 and all("cont_loss" in out for out in traced["losses"][6:])
    for a, b in zip(eager["losses"], traced["losses"]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    # augmentation and anchors still draw anew every iteration
    assert len({round(out["cont_loss"], 6) for out in traced["losses"][6:]}) > 1
    assert [r["iteration"] for r in traced["refresh"]] == [7.0, 10.0]
    assert torch.equal(traced["store"], eager["store"])
    assert traced["monitor_checks"] == 2
    for a, b in zip(eager["predictions"], traced["predictions"]):
        assert torch.equal(a, b)
    for key, value in eager["weights"].items():
        torch.testing.assert_close(traced["weights"][key], value, rtol=1e-4, atol=1e-5)


def test_compile_step_refuses_configurations_that_are_not_one_graph() -> None:
    with pytest.raises(ValueError, match="check_inputs=False"):
        _trainer(True, contrastive_loss=PixelContrastiveLoss(3))
    with pytest.raises(ValueError, match="'none'"):
        _trainer(True, contrastive_loss=PixelContrastiveLoss(3, check_inputs=False, reduction="none"))
    with pytest.raises(ValueError, match="global RNG"):
        _trainer(True, contrastive_loss=PixelContrastiveLoss(3, check_inputs=False, generator=torch.Generator()))
    with pytest.raises(ValueError, match="GraphSafeDiceLoss"):
        _trainer(True, seg_loss=DiceLoss(to_onehot_y=True, softmax=True))
    with pytest.raises(ValueError, match="shared_forward=False"):
        _trainer(True, shared_forward=False)
    with pytest.raises(ValueError, match="mapping"):
        CompiledLosses(lambda *a: {}, torch.device("cpu"), options=["reduce-overhead"])


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_compiled_optimizer_step_equals_eager_and_resets_and_restores_without_recompiling(optimizer_class) -> None:
    """The update as a graph: the same weights as eager through a reset (the joint phase's fresh optimizer)
    and a restore (the round's best state); Adam's state is reset and restored in place, so nothing
    recompiles after the first step (SGD's fresh momentum is not zeros: its reset clears the state)."""
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))]
    nets.append(copy.deepcopy(nets[0]))
    kwargs = {"lr": 1e-2} if optimizer_class is not torch.optim.SGD else {"lr": 1e-2, "momentum": 0.9}
    eager_opt, opt = (optimizer_class(net.parameters(), **kwargs) for net in nets)
    compiled = CompiledOptimizerStep(opt, {"backend": "aot_eager"})
    inputs = torch.randn(5, 16, 6, generator=torch.Generator().manual_seed(1))

    def step(k: int) -> None:
        for net, optimizer, update in ((nets[0], eager_opt, eager_opt.step), (nets[1], opt, compiled)):
            optimizer.zero_grad(set_to_none=True)
            net(inputs[k]).pow(2).mean().backward()
            update()

    step(0)
    saved = [copy.deepcopy(o.state_dict()) for o in (eager_opt, opt)]
    before = [t for state in compiled._param_states() for t in state.values() if isinstance(t, torch.Tensor)]
    zero_init = optimizer_class is not torch.optim.SGD
    with torch._dynamo.config.patch(error_on_recompile=zero_init):
        step(1)
        eager_opt.state.clear()
        compiled.reset_state()
        step(2)
        eager_opt.load_state_dict(saved[0])
        compiled.load_state_dict(saved[1])
        step(3)
        step(4)
    after = [t for state in compiled._param_states() for t in state.values() if isinstance(t, torch.Tensor)]
    assert all(a is b for a, b in zip(before, after)) == zero_init
    for a, b in zip(*(net.parameters() for net in nets)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mapping"):
        CompiledOptimizerStep(opt, options="reduce-overhead")


def test_compiled_trainer_resets_and_restores_adam_in_place() -> None:
    """The compiled trainer with Adam: the joint phase starts from zeroed moments and the second round
    from the kept round-best weights and optimizer state, written into the tensors the compiled update
    was traced with (new tensors would recompile it)."""
    trainer, _ = _trainer(True, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
                          round_length=3, restore_best_each_round=True)
    seen = {}

    def tensors(e) -> list[torch.Tensor]:
        return [t for state in e.compiled_optimizer_step._param_states() for t in state.values()]

    def at_joint_start(e) -> None:
        seen["joint"] = tensors(e)
        assert seen["joint"] and all(not t.any() for t in seen["joint"])

    def keep(e) -> None:
        seen["kept"] = copy.deepcopy(e.optimizer.state_dict())
        e.keep_round_best(copy.deepcopy(e.network.state_dict()))

    def at_round_two(e) -> None:
        assert all(a is b for a, b in zip(tensors(e), seen["joint"]))
        for key, value in e.best_round_state["network"].items():
            assert torch.equal(e.network.state_dict()[key], value)
        for i, state in seen["kept"]["state"].items():
            for key, value in state.items():
                assert torch.equal(e.optimizer.state_dict()["state"][i][key], value)
        seen["restored"] = True

    # the trainer's own handlers (registered first) run before these at the same event
    trainer.add_event_handler(Events.ITERATION_STARTED(once=7), at_joint_start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=8), keep)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=10), at_round_two)
    trainer.run()
    assert seen.get("restored")


def test_compile_options_keep_mode_for_inductor_only() -> None:
    assert CompiledLosses(lambda *a: {}, torch.device("cpu")).options == COMPILE_DEFAULTS
    traced = CompiledLosses(lambda *a: {}, torch.device("cpu"), options={"backend": "aot_eager"})
    assert "mode" not in traced.options and traced.options["fullgraph"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graph_step_equals_eager_step_on_cuda() -> None:
    """``mode="reduce-overhead"`` on the GPU: the same losses and weights as eager, with inductor's RNG
    falling back to eager's so that both draw the same anchors."""
    torch._inductor.config.fallback_random = True
    runs = {}
    for compile_step in (False, True):
        trainer, _ = _trainer(compile_step, device="cuda")
        losses = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
        trainer.run()
        runs[compile_step] = (losses, trainer.network.state_dict())
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-3, abs=1e-4)
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("spatial", [(12, 10), (6, 5, 4)])
def test_graph_safe_dice_equals_monai_dice_and_is_one_graph(spatial: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, *spatial, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 1, *spatial), generator=gen)
    labels[0] = 0  # classes absent from a slice: the smoothing terms decide
    grads = []
    for fn in (DiceLoss(include_background=True, to_onehot_y=True, softmax=True),
               torch.compile(GraphSafeDiceLoss(), **TRACE)):
        x = logits.clone().requires_grad_(True)
        value = fn(x, labels)
        value.backward()
        grads.append((value.detach(), x.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="labels must be"):
        GraphSafeDiceLoss()(logits, labels[:, 0])
