"""benchmarks/train_speed.py at a tiny size on CPU: the JSON it writes, the ratios, the hand-written Dice."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from monai.losses import DiceLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_modules import load_benchmark  # noqa: E402

train_speed = load_benchmark("train_speed")


def _positive_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_soft_dice_matches_monai_dice_loss() -> None:
    # the yardstick's hand-written Dice must be the loss the engine uses (the bundle's DiceLoss)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (3, 1, 16, 16), generator=gen)
    expected = DiceLoss(include_background=True, to_onehot_y=True, softmax=True)(logits, labels)
    torch.testing.assert_close(train_speed.soft_dice_loss(logits, labels), expected)


def test_synthetic_slices_hold_every_class() -> None:
    images, labels = train_speed.synthetic_slices(6, 32, 4, torch.Generator().manual_seed(1))
    assert images.shape == (6, 1, 32, 32) and labels.shape == (6, 32, 32) and labels.dtype == torch.uint8
    present = torch.stack([(labels == c).flatten(1).any(1) for c in range(4)], 1)
    assert bool(present.all())  # nested discs: background and every structure in every slice


def test_main_writes_json_with_positive_numbers_and_consistent_ratios(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    argv = [
        "--device", "cpu", "--size", "ci", "--spatial", "32", "--batch", "4", "--iterations", "2", "--warmup", "1",
        "--unlabeled-volumes", "2", "--slices", "2", "--val-volumes", "1", "--loss-repeats", "1",
        "--full", "--schedule-warmup", "2", "--schedule-rounds", "2", "--schedule-interval", "2", "--val-interval", "2",
        "--threads", "1", "--out", str(out),
    ]
    returned = train_speed.main(argv)
    payload = json.loads(out.read_text())
    assert payload["config"]["spatial"] == [32, 32] and payload["config"]["batch_size"] == 4
    assert payload["config"]["amp_dtype"] == "float32" and payload["config"]["channels_last"] is False

    steps = payload["step_ms"]
    assert set(steps) == {"a_yardstick", "a_yardstick_seg", "b_engine_seg", "c_engine_joint"}
    assert all(_positive_finite(v) for v in steps.values()), steps
    ratios = payload["ratios"]
    assert ratios["b_over_a"] == pytest.approx(steps["b_engine_seg"] / steps["a_yardstick"])
    assert ratios["c_over_a"] == pytest.approx(steps["c_engine_joint"] / steps["a_yardstick"])
    assert ratios["b_over_a_seg"] == pytest.approx(steps["b_engine_seg"] / steps["a_yardstick_seg"])

    loss = payload["loss"]
    for key in ("vectorised_ms_median", "loop_ms_median", "speedup_median"):
        assert _positive_finite(loss[key]), key
    assert loss["speedup_median"] == pytest.approx(loss["loop_ms_median"] / loss["vectorised_ms_median"])

    refresh = payload["refresh"]
    assert refresh["volumes"] == 2 and refresh["slices"] == 4
    assert _positive_finite(refresh["ms_per_volume"])
    assert refresh["ms_per_volume"] == pytest.approx(1e3 * refresh["seconds"] / 2)
    validation = payload["validation"]
    assert validation["volumes"] == 1 and _positive_finite(validation["seconds_per_run"])
    assert 0.0 <= validation["val_mean_dice"] <= 1.0

    projection = payload["projection"]
    assert projection["total_iterations"] == 2 + 2 * 2 and projection["validations"] == 3
    parts = projection["seconds"]
    assert parts["warmup_iterations_s"] == pytest.approx(2 * steps["b_engine_seg"] / 1e3)
    assert parts["joint_iterations_s"] == pytest.approx(4 * steps["c_engine_joint"] / 1e3)
    assert projection["total_s"] == pytest.approx(sum(parts.values()))
    assert all(_positive_finite(v) for v in parts.values())

    full = payload["full"]
    assert full["iterations"] == 6 and full["validations"] == 3 and full["refreshes"] == 2
    assert _positive_finite(full["wall_s"]) and full["validation_s"] <= full["wall_s"]
    periodic = full["periodic_s_by_phase"]  # validations at 2 (warm-up), 4, 6; checkpoints at 2 and at the end
    assert set(periodic) == {"validation_s_warmup", "validation_s_joint", "checkpoint_s_warmup", "checkpoint_s_joint"}
    assert periodic["validation_s_warmup"] + periodic["validation_s_joint"] == pytest.approx(full["validation_s"])

    assert _positive_finite(payload["memory"]["peak_rss_mib"])
    assert payload["joint_iteration_syncs"] is None  # listed on CUDA only
    assert payload["targets"]["applicable"] is False  # the GPU targets are not judged on a CPU
    assert payload["machine"]["torch"] == torch.__version__
    assert returned["step_ms"] == steps


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(SystemExit):
        train_speed.parse_args(["--iterations", "0"])
    with pytest.raises(SystemExit):
        train_speed.main(["--device", "cpu", "--spatial", "48", "--channels", "8", "16", "32", "32", "32", "32"])


def test_sync_probe_records_where_syncs_happen(monkeypatch: pytest.MonkeyPatch) -> None:
    # the CUDA calls are replaced: the probe's bookkeeping is what is tested here
    modes: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    probe = train_speed.SyncProbe(None, torch.device("cuda"), iteration=5)
    probe._begin()
    warnings.warn("Synchronization debug mode is a prototype feature and does not yet detect all synchronizing ops")
    warnings.warn("called a synchronizing CUDA operation")
    warnings.warn("an unrelated warning")
    probe._end()
    assert modes == ["warn", "default"]
    assert len(probe.syncs) == 1 and probe.syncs[0].startswith("test_train_speed_benchmark.py:")
    assert "synchronizing" in probe.syncs[0]


def test_profile_window_profiles_exactly_its_iterations(tmp_path: Path) -> None:
    from ignite.engine import Engine, Events

    calls: list[int] = []

    def step(engine: Engine, batch: object) -> None:
        calls.append(engine.state.iteration)
        torch.ones(64, 64) @ torch.ones(64, 64)

    engine = Engine(step)
    window = train_speed.ProfileWindow(Events, torch.device("cpu"), first=3, count=2, path=tmp_path / "p" / "t.txt")
    window.attach(engine)
    engine.run([0] * 6, max_epochs=1)
    assert calls == [1, 2, 3, 4, 5, 6]
    summary = window.summary
    assert summary["iterations"] == "3..4"
    assert summary["device_busy_ms_per_iteration"] == 0.0  # no device activity on a CPU
    assert 0.0 < summary["host_operator_ms_per_iteration_profiled"] <= summary["wall_ms_per_iteration_profiled"] * 1.5
    table = (tmp_path / "p" / "t.txt").read_text()
    assert "aten::mm" in table  # the matmul of the profiled iterations
