"""Several processes on CPU (gloo): identical pseudo-labels on every rank, rank 0 alone writes and logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from plc_monai.data.phantom import write_phantom_dataset
from plc_monai.handlers import PseudoLabelRefresh
from plc_monai.networks import ContrastiveHeadUNet, TrainForward
from plc_monai.pseudo_labels import PseudoLabelStore

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "acdc" / "configs"
NUM_SLICES, SIZE, NUM_CLASSES = 9, 16, 3  # 9 slices: the two shards have unequal sizes


def _images() -> torch.Tensor:
    return torch.rand(NUM_SLICES, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ContrastiveHeadUNet(num_classes=NUM_CLASSES, channels=(4, 8), embedding_dim=4)


def _refresh(network: torch.nn.Module) -> torch.Tensor:
    store = PseudoLabelStore(NUM_SLICES, (SIZE, SIZE), volume_index=torch.arange(NUM_SLICES) // 3)
    PseudoLabelRefresh(store, _images(), network, interval=1, batch_size=2).refresh(iteration=1)
    return store.labels.clone()


def _rank_main(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        net = _network(seed=100 + rank)  # different weights on each rank before DDP
        torch.nn.parallel.DistributedDataParallel(TrainForward(net))  # broadcasts rank 0's weights
        torch.save(_refresh(net), f"{folder}/labels_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_refresh_under_ddp_gives_every_rank_the_single_process_labels(tmp_path):
    # spawn, not fork: a fork of a process whose torch thread pools already ran can deadlock
    context = mp.start_processes(_rank_main, args=(2, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo processes did not finish within 180 s")
    rank0 = torch.load(tmp_path / "labels_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "labels_rank1.pt", weights_only=True)
    single = _refresh(_network(seed=100))
    assert torch.equal(rank0, rank1)
    assert torch.equal(rank0, single)
    # the comparison can fail: rank 1's own (unsynchronised) weights label the slices differently
    assert not torch.equal(single, _refresh(_network(seed=101)))


@pytest.mark.slow
def test_torchrun_bundle_two_processes_rank0_writes_and_logs(tmp_path):
    data = write_phantom_dataset("acdc", tmp_path / "phantom", num_subjects=6, image_size=(32, 32), num_slices=4)
    out, logs = tmp_path / "run", tmp_path / "torchrun_logs"
    config = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "--log-dir", str(logs), "--redirects", "3",
        "-m", "monai.bundle", "run", "training", "--config_file", config,
        "--dataset_dir", str(data / "training"), "--split", "random", "--setting", "tr1",
        "--warmup_iterations", "2", "--num_rounds", "1", "--pseudo_label_interval", "2", "--val_interval", "4",
        "--log_interval", "1", "--save_interval", "2", "--batch_size", "4", "--labeled_per_batch", "2",
        "--crop_size", "32", "--spacing_mm", "3.0", "--channels", "[4,8]", "--n4", "False",
        "--output_dir", str(out), "--cache_dir", str(out / "cache"), "--ckpt_dir", str(out / "models"),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    rank_logs = {int(p.parent.name): p.read_text() + (p.parent / "stderr.log").read_text() for p in logs.rglob("stdout.log")}
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + str({r: t[-2000:] for r, t in rank_logs.items()})
    assert sorted(rank_logs) == [0, 1]
    progress = re.compile(r"\| iteration (\d+)/4 \|")
    assert [int(m) for m in progress.findall(rank_logs[0])] == [1, 2, 3, 4]
    assert "pseudo-label refresh 1 at iteration 3" in rank_logs[0]
    assert progress.findall(rank_logs[1]) == [] and "pseudo-label refresh" not in rank_logs[1]
    # one writer: a single checkpoint, model and TensorBoard file, no leftover temporary files
    models = sorted(p.name for p in (out / "models").iterdir())
    # no validation in the 2 warm-up iterations: no model_warmup.pt; best_models.json says where model.pt came from
    assert models == ["best_models.json", "checkpoint.pt", "model.pt"]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    checkpoint = torch.load(out / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert int(checkpoint["trainer"]["iteration"]) == 4
    assert not any(k.startswith("module.") for k in checkpoint["network"])  # saved without the DDP wrapper
