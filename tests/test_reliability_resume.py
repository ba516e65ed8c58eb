"""Interruption, resume and determinism of a real bundle training run on CPU.

One module fixture runs ``python -m monai.bundle run training`` three times on a tiny phantom:
an uninterrupted reference run, a run killed with SIGKILL in the joint phase, and the same command
again, which must resume from the last checkpoint and end with exactly the reference's weights.
The reference and the killed run also give two loss curves of one seed, which must be identical.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from plc_monai.data.phantom import write_phantom_dataset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bundles" / "acdc" / "configs" / "train.json"
WARMUP, TOTAL, SAVE_INTERVAL = 4, 12, 2
KILL_AFTER = 7  # the progress line of this joint iteration triggers the kill (checkpoint 6 exists then)


def command(dataset_dir: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN),
        "--dataset_dir", str(dataset_dir), "--split", "random", "--setting", "tr1",
        "--warmup_iterations", str(WARMUP), "--num_rounds", "2", "--pseudo_label_interval", str((TOTAL - WARMUP) // 2),
        "--val_interval", "4", "--log_interval", "1", "--save_interval", str(SAVE_INTERVAL),
        "--batch_size", "4", "--labeled_per_batch", "2", "--crop_size", "32", "--spacing_mm", "3.0",
        "--channels", "[4,8]", "--n4", "False", "--seed", "5",
        "--output_dir", str(out), "--cache_dir", str(out / "cache"), "--ckpt_dir", str(out / "models"),
    ]


# one thread: on a busy shared CPU, OpenMP threads waiting for each other slow tiny convolutions 10-20x
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_to_end(cmd: list[str]) -> str:
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def run_and_kill(cmd: list[str], pattern: str) -> str:
    """Start ``cmd`` and SIGKILL it as soon as a line of its output matches ``pattern``."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if re.search(pattern, line):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the run did not reach the kill point in time"
        else:
            pytest.fail("the run ended before the kill point:\n" + "".join(lines[-40:]))
    finally:
        proc.kill() if proc.poll() is None else None
        proc.wait(timeout=60)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return "".join(lines)


def loss_curve(tensorboard_dir: Path) -> dict[int, float]:
    """``{iteration: train/loss}`` from every event file in the folder; later files win."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve: dict[int, float] = {}
    for events in sorted(tensorboard_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        curve.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return curve


def network_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["network"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    data = write_phantom_dataset("acdc", root / "phantom", num_subjects=6, image_size=(32, 32), num_slices=4) / "training"
    ref, interrupted = root / "reference", root / "interrupted"
    info: dict = {"reference": ref, "interrupted": interrupted}
    info["reference_log"] = run_to_end(command(data, ref))
    info["killed_log"] = run_and_kill(command(data, interrupted), rf"joint \| iteration {KILL_AFTER}/{TOTAL}")
    info["killed_checkpoint"] = torch.load(interrupted / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    info["killed_curve"] = loss_curve(interrupted / "tensorboard")
    info["resumed_log"] = run_to_end(command(data, interrupted))
    return info


def test_killed_run_resumes_and_matches_the_uninterrupted_run(runs):
    killed_at = int(runs["killed_checkpoint"]["trainer"]["iteration"])
    assert WARMUP < killed_at < TOTAL and killed_at % SAVE_INTERVAL == 0  # a periodic checkpoint in the joint phase
    assert runs["killed_checkpoint"]["trainer_extras"]["joint_started"]
    assert runs["killed_checkpoint"]["pseudo_label_refresh"]["store"] is not None
    assert f"resumed from {runs['interrupted'] / 'models' / 'checkpoint.pt'} at iteration {killed_at}" in runs["resumed_log"]
    # the resumed process trains only the remaining iterations and reaches the same final iteration
    resumed_iterations = [int(m) for m in re.findall(rf"\| iteration (\d+)/{TOTAL} \|", runs["resumed_log"])]
    assert resumed_iterations == list(range(killed_at + 1, TOTAL + 1))
    final = torch.load(runs["interrupted"] / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert int(final["trainer"]["iteration"]) == TOTAL
    # bit-identical weights: the final checkpoint and the deployable best model
    for name in ("checkpoint.pt", "model.pt"):
        ref_dir, res_dir = runs["reference"] / "models", runs["interrupted"] / "models"
        if name == "checkpoint.pt":
            expected, got = network_weights(ref_dir / name), network_weights(res_dir / name)
        else:
            expected = torch.load(ref_dir / name, map_location="cpu", weights_only=True)
            got = torch.load(res_dir / name, map_location="cpu", weights_only=True)
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=f"{name}: {key}")
    # no temporary checkpoint file is left next to the final one
    assert sorted(p.name for p in (runs["interrupted"] / "models").iterdir() if p.name.startswith(".")) == []


def test_same_seed_gives_identical_loss_curves(runs):
    reference = loss_curve(runs["reference"] / "tensorboard")
    assert sorted(reference) == list(range(1, TOTAL + 1))
    killed = runs["killed_curve"]
    # the kill lands right after the progress line, possibly before that iteration's scalars are flushed
    assert len(killed) >= KILL_AFTER - 1
    # the killed run is an independent process with the same seed: its first iterations match exactly
    assert {it: killed[it] for it in sorted(killed)} == {it: reference[it] for it in sorted(killed)}
    # and after the resume the remaining iterations match too
    resumed = loss_curve(runs["interrupted"] / "tensorboard")
    assert resumed == reference


def test_seed_and_split_ids_are_recorded(runs):
    for name in ("reference", "interrupted"):
        out = runs[name]
        info = json.loads((out / "run_info.json").read_text())
        assert info["seed"] == 5
        assert info["config"]["split"] == "random" and info["config"]["split_seed"] == 0
        split = json.loads((out / "split.json").read_text())
        assert split["seed"] == 0 and len(split["labeled"]) == 1 and len(split["validation"]) == 2
        ids = split["labeled"] + split["validation"] + split["unlabeled"] + split["test"]
        assert sorted(ids) == [f"{i:03d}" for i in range(1, 7)]
    # the interrupted folder records both invocations (the killed one and the resumed one)
    assert len(json.loads((runs["interrupted"] / "run_info.json").read_text())["invocations"]) == 2
    assert len(json.loads((runs["reference"] / "run_info.json").read_text())["invocations"]) == 1
