"""Bad input and bad config fail at start-up with a message naming the file, folder or config id;
degenerate labels and pseudo-labels only warn (once) while training continues with a finite loss.

The bundle cases run the real entry point ``python -m monai.bundle run training`` in a subprocess.
Reader-level checks of single files are in ``tests/test_readers.py`` and are not repeated here.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceLoss

from plc_monai.cli import prepare
from plc_monai.config_checks import ConfigValueError, check_training_config
from plc_monai.data.phantom import write_phantom_dataset
from plc_monai.data.preprocessing import AtomicPersistentDataset
from plc_monai.data.readers import VolumeValidationError, validate_entry
from plc_monai.data.slice_pool import SlicePool
from plc_monai.data.specs import ACDC
from plc_monai.engines import SemiSupervisedTrainer
from plc_monai.handlers import PseudoLabelRefresh
from plc_monai.losses import PixelContrastiveLoss
from plc_monai.monitoring import DegenerateBatchMonitor
from plc_monai.networks import ContrastiveHeadUNet
from plc_monai.pseudo_labels import PseudoLabelStore
from plc_monai.run_record import write_run_info

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
TINY = ["--crop_size", "32", "--spacing_mm", "3.0", "--channels", "[4,8,8]", "--n4", "False",
        "--warmup_iterations", "2", "--num_rounds", "1", "--pseudo_label_interval", "2", "--val_interval", "2",
        "--batch_size", "4", "--labeled_per_batch", "2", "--split", "random", "--setting", "tr1"]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def run_bundle(dataset_dir: Path, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run training`` of the ACDC bundle on tiny settings, outputs under ``out``."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(BUNDLES / "acdc" / "configs" / "train.json"),
        "--dataset_dir", str(dataset_dir), *TINY,
        "--output_dir", str(out), "--cache_dir", str(out / "cache"), "--ckpt_dir", str(out / "models"), *extra,
    ]
    # one thread: on a busy shared CPU, OpenMP threads waiting for each other slow tiny convolutions 10-20x
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_no_training(out: Path) -> None:
    """Nothing of a training run exists: no checkpoint, no model, no TensorBoard events, no cache file."""
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.exists() else []
    forbidden = [p for p in written if p.endswith(".pt") or "tfevents" in p]
    assert forbidden == [], f"training wrote {forbidden}"


@pytest.fixture(scope="module")
def phantom_acdc(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "acdc"
    write_phantom_dataset("acdc", root, num_subjects=4, image_size=(32, 32), num_slices=4)
    return root / "training"


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# bad data through the bundle entry point
# ------------------------------------------------------------------------------------------------


def _missing(tmp_path: Path, phantom: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "no_such_folder"
    return folder, [str(folder), "does not exist", "expected ACDC layout"]


def _other_layout(tmp_path: Path, phantom: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "prostate"
    write_phantom_dataset("prostate", folder, num_subjects=2, image_size=(32, 32), num_slices=4)
    return folder, [str(folder), "MSD layout", "expected ACDC layout"]


def _truncated(tmp_path: Path, phantom: Path) -> tuple[Path, list[str]]:
    folder = copy_tree(phantom, tmp_path / "training")
    bad = sorted(folder.glob("patient002/patient002_frame*[0-9].nii.gz"))[0]
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    return folder, [str(bad), "truncated"]


def _label_values(tmp_path: Path, phantom: Path) -> tuple[Path, list[str]]:
    folder = copy_tree(phantom, tmp_path / "training")
    gt = sorted(folder.glob("patient003/*_gt.nii.gz"))[0]
    img = nib.load(str(gt))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(gt))
    return folder, [str(gt), "unexpected label value(s) 7", "expected values in [0, 1, 2, 3]"]


@pytest.mark.parametrize(
    "make_case",
    [_missing, _other_layout, _truncated, _label_values],
    ids=["missing_folder", "other_layout", "truncated_file", "label_values"],
)
def test_bundle_rejects_bad_data_before_training(tmp_path, phantom_acdc, make_case):
    dataset_dir, expected = make_case(tmp_path, phantom_acdc)
    out = tmp_path / "run"
    result = run_bundle(dataset_dir, out)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    for text in expected:
        assert text in log, f"{text!r} not in the output:\n{log[-3000:]}"
    assert "iteration 1/" not in log and "Engine run starting" not in log  # failed before the trainer ran
    assert_no_training(out)


# ------------------------------------------------------------------------------------------------
# bad config through the bundle entry point: fails at `initialize`, before data is read
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        # the constructors of the network and the loss, built first in `initialize`
        (["--matching", "cross"], ["matching must be one of", "got 'cross'"]),
        (["--num_samples", "0"], ["num_samples must be None or an int >= 1, got 0"]),
        (["--temperature", "0.0"], ["temperature must be a number > 0, got 0.0"]),
        (["--channels", "[4]"], ["channels needs at least 2 levels"]),
        # the checks across ids (ConfigValueError), all problems in one message
        (["--split", "paper", "--combo", "c9"], ["ConfigValueError", "'combo' = 'c9': not a combination of acdc tr1"]),
        (
            ["--crop_size", "30", "--labeled_per_batch", "5", "--resume", "false"],
            [
                "ConfigValueError",
                "3 invalid training config value(s)",
                "'crop_size' = 30: must be divisible by 4",
                "'labeled_per_batch' = 5: expected an integer in [1, batch_size = 4]",
                "'resume' = 'false': expected True or False",
            ],
        ),
    ],
    ids=["matching", "num_samples", "temperature", "channels", "combo", "crop_size+labeled_per_batch+resume"],
)
def test_bundle_rejects_bad_config_at_initialize(tmp_path, override, expected):
    # the dataset folder does not exist: a failure at `initialize` must come before the data is read
    out = tmp_path / "run"
    result = run_bundle(tmp_path / "data_not_read", out, *override)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    for text in expected:
        assert text in log, f"{text!r} not in the output:\n{log[-3000:]}"
    assert "does not exist" not in log  # the dataset folder was never looked at
    assert not out.exists()  # nothing written, not even run_info.json


# ------------------------------------------------------------------------------------------------
# config checks at function level
# ------------------------------------------------------------------------------------------------

NETWORK = ContrastiveHeadUNet(num_classes=4, channels=(16, 32, 64, 128, 128, 128))  # divisor 32
INTER, INTRA = PixelContrastiveLoss(4, matching="inter"), PixelContrastiveLoss(4, matching="intra")
GOOD = dict(
    network=NETWORK, crop_size=192, contrastive_loss=INTER, lambda_cont=0.1, warmup_iterations=5000, num_rounds=3,
    pseudo_label_interval=5000, val_interval=50, batch_size=20, labeled_per_batch=10, dataset="acdc",
    split="paper", setting="tr1", combo="c1",
)


@pytest.mark.parametrize("bundle", ["acdc", "prostate", "mmwhs"])
def test_bundle_initialize_builds_network_and_loss_before_the_checks(bundle, tmp_path):
    from monai.bundle import ConfigParser

    config = json.loads((BUNDLES / bundle / "configs" / "train.json").read_text())
    steps = config["initialize"]
    assert steps[1:3] == ["@network_def", "@contrastive_loss"]
    targets = [s["_target_"] for s in steps if isinstance(s, dict)]
    assert targets == ["plc_monai.config_checks.check_training_config", "plc_monai.run_record.write_run_info"]
    check = steps[3]
    # only cross-id values: what the network's and the loss's constructors check is not passed again
    assert check["network"] == "@network_def" and check["contrastive_loss"] == "@contrastive_loss"
    assert not {"channels", "num_samples", "temperature", "matching"} & set(check)
    switches = check["switches"]
    assert switches == {k: f"@{k}" for k in switches}
    assert {"n4", "resume", "amp", "save_pseudo_labels"} <= set(switches)
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.json"))
    parser["output_dir"] = str(tmp_path / "run")
    parser.get_parsed_content("initialize")  # the defaults pass, and the run record is written
    assert (tmp_path / "run" / "run_info.json").is_file()
    parser["n4"] = "false"
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("initialize#3", lazy=False)
    assert "'n4' = 'false': expected True or False" in str(info.value.__cause__ or info.value)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"crop_size": 100}, "'crop_size' = 100: must be divisible by 32 = 2**5"),
        ({"crop_size": [192, 100]}, "'crop_size' = [192, 100]"),
        ({"crop_size": "192"}, "'crop_size' = '192': expected a positive integer"),
        ({"lambda_cont": -0.1}, "'lambda_cont' = -0.1"),
        ({"lambda_cont": float("nan")}, "'lambda_cont' = nan"),
        ({"warmup_iterations": -1}, "'warmup_iterations' = -1"),
        ({"pseudo_label_interval": 0}, "'pseudo_label_interval' = 0"),
        ({"val_interval": 0}, "'val_interval' = 0"),
        ({"labeled_per_batch": 21}, "'labeled_per_batch' = 21: expected an integer in [1, batch_size = 20]"),
        ({"batch_size": 21}, "'batch_size' = 21: 'matching' = 'inter' pairs"),
        ({"warmup_iterations": 0, "num_rounds": 0}, "expected at least 1 iteration"),
        ({"setting": "tr3"}, "'setting' = 'tr3': not a paper setting of acdc"),
        ({"split": "random", "setting": "three"}, "'setting' = 'three': a random split needs 'trN'"),
        ({"split": "paper", "dataset": "folder"}, "the paper's splits exist for"),
        ({"split": "nonsense"}, "'split' = 'nonsense'"),
        ({"dataset": "brats"}, "'dataset_name' = 'brats'"),
        ({"switches": {"resume": "False"}}, "'resume' = 'False': expected True or False"),
    ],
)
def test_check_training_config_names_id_value_and_expectation(changes, expected):
    with pytest.raises(ConfigValueError) as err:
        check_training_config(**{**GOOD, **changes})
    assert expected in str(err.value)
    assert isinstance(err.value, ValueError)


def test_check_training_config_lists_all_problems_and_split_files(tmp_path, caplog):
    check_training_config(**GOOD, switches={"n4": True, "resume": False})
    with pytest.raises(ConfigValueError, match="3 invalid") as err:
        check_training_config(**{**GOOD, "crop_size": 100, "val_interval": 0, "combo": "c9"})
    for config_id in ("crop_size", "val_interval", "combo"):
        assert f"'{config_id}'" in str(err.value)
    # an odd batch is fine for intra-image matching, without the contrastive loss or without a joint phase
    check_training_config(**{**GOOD, "batch_size": 21, "contrastive_loss": INTRA})
    check_training_config(**{**GOOD, "batch_size": 21, "lambda_cont": 0.0})
    check_training_config(**{**GOOD, "batch_size": 21, "num_rounds": 0})
    check_training_config(**{**GOOD, "batch_size": 21, "contrastive_loss": None})
    # split files: a missing or malformed file is named
    with pytest.raises(ConfigValueError, match="does not exist"):
        check_training_config(**{**GOOD, "split": str(tmp_path / "nope.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigValueError, match="not a valid split file"):
        check_training_config(**{**GOOD, "split": str(bad)})
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"labeled": ["a"], "validation": ["b"], "unlabeled": ["c"], "test": []}))
    check_training_config(**{**GOOD, "split": str(good)})
    # a total that val_interval does not divide only warns: the trainer rounds it up
    with caplog.at_level(logging.WARNING, logger="plc_monai.config_checks"):
        check_training_config(**{**GOOD, "val_interval": 7000})
    assert "runs 21000 iterations" in caplog.text


def test_crop_check_uses_the_networks_own_divisor():
    net = ContrastiveHeadUNet(num_classes=2, channels=(4, 8, 8), embedding_dim=4).eval()
    args = {**GOOD, "network": net}
    check_training_config(**{**args, "crop_size": 32})
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(ConfigValueError, match=r"'crop_size' = 30: must be divisible by 4 = 2\*\*2"):
        check_training_config(**{**args, "crop_size": 30})
    with pytest.raises(ValueError, match="not divisible by 4"):  # what the check reports before data loading
        net(torch.zeros(1, 1, 30, 30))
    # a network without a stated divisor is not compared (its own forward decides)
    check_training_config(**{**args, "network": torch.nn.Identity(), "crop_size": 30})


def test_write_run_info(tmp_path, monkeypatch):
    path = write_run_info(tmp_path / "out", seed=7, split="random", split_seed=3)
    record = json.loads(path.read_text())
    assert record["seed"] == 7 and record["config"] == {"split": "random", "split_seed": 3}
    assert len(record["invocations"]) == 1 and record["versions"]["torch"] == torch.__version__
    write_run_info(tmp_path / "out", seed=7, split="random", split_seed=3)  # a resumed run appends
    assert len(json.loads(path.read_text())["invocations"]) == 2
    write_run_info(tmp_path / "out", seed=8, split="random", split_seed=3)  # other settings replace
    record = json.loads(path.read_text())
    assert record["seed"] == 8 and len(record["invocations"]) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["run_info.json"]  # no temporary file left
    for _ in range(2):  # a NaN value is recorded as null and still matches it on resume
        nan_path = write_run_info(tmp_path / "nan", seed=0, lambda_cont=float("nan"))
    record = json.loads(nan_path.read_text())
    assert record["config"] == {"lambda_cont": None} and len(record["invocations"]) == 2
    monkeypatch.setenv("RANK", "1")
    assert write_run_info(tmp_path / "rank1", seed=0) is None and not (tmp_path / "rank1").exists()


# ------------------------------------------------------------------------------------------------
# file checks the reader tests do not cover, and caching without partial files
# ------------------------------------------------------------------------------------------------


def _save(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 5.0, 1.0])), str(path))
    return str(path)


def test_2d_files_and_inf_voxels_name_the_file(tmp_path):
    rng = np.random.default_rng(0)
    img3d = _save(tmp_path / "ok.nii.gz", rng.normal(size=(8, 8, 3)).astype(np.float32))
    lab3d = _save(tmp_path / "ok_gt.nii.gz", np.zeros((8, 8, 3), np.uint8))
    img2d = _save(tmp_path / "flat.nii.gz", rng.normal(size=(8, 8)).astype(np.float32))
    with pytest.raises(VolumeValidationError, match=r"flat.nii.gz: expected a 3D volume, got shape \(8, 8\)"):
        validate_entry({"image": img2d, "id": "flat"}, ACDC)
    lab2d = _save(tmp_path / "flat_gt.nii.gz", np.zeros((8, 8), np.uint8))
    with pytest.raises(VolumeValidationError, match=r"flat_gt.nii.gz: expected a 3D label volume"):
        validate_entry({"image": img3d, "label": lab2d, "id": "x"}, ACDC)
    data = rng.normal(size=(8, 8, 3)).astype(np.float32)
    data[1, 1, 1] = np.inf
    inf = _save(tmp_path / "inf.nii.gz", data)
    with pytest.raises(VolumeValidationError, match=r"inf.nii.gz: 1 NaN/Inf voxel"):
        validate_entry({"image": inf, "label": lab3d, "id": "inf"}, ACDC)


def test_split_file_id_missing_from_the_folder_is_named(tmp_path, phantom_acdc):
    from plc_monai.data.datalists import split_datalists

    split = tmp_path / "my_split.json"
    split.write_text(json.dumps({"labeled": ["001"], "validation": ["002"], "unlabeled": ["003", "042"], "test": []}))
    with pytest.raises(ValueError, match="042") as err:
        split_datalists("acdc", phantom_acdc, split=str(split), save_to=tmp_path / "out" / "split.json")
    assert str(phantom_acdc) in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting", ["tr0", "tr01", "tr\u00b2", "three", 2])
def test_random_split_setting_is_checked_like_the_bundle_check(phantom_acdc, setting):
    """``split_datalists`` accepts the ``trN`` settings that ``check_training_config`` accepts, and no other."""
    from plc_monai.data.datalists import split_datalists

    with pytest.raises(ValueError, match="is not of the form 'trN'"):
        split_datalists("acdc", phantom_acdc, split="random", setting=setting, validate=False)
    assert len(split_datalists("acdc", phantom_acdc, split="random", setting="tr1", validate=False)["labeled"]) == 1


def test_prepare_stops_before_caching_when_a_file_is_truncated(tmp_path, phantom_acdc):
    """``python -m plc_monai prepare`` reads the folder through the bundle's ``data`` (validating every
    volume) before it caches anything: a truncated file stops it, named, with an empty cache."""
    folder = copy_tree(phantom_acdc, tmp_path / "training")
    bad = sorted(folder.glob("patient004/*_gt.nii.gz"))[0]  # the ED frame, the one the reader uses
    bad.write_bytes(bad.read_bytes()[:100])
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the reader's error in "Failed to instantiate"
        prepare("acdc", str(folder), str(cache), n4=False, spacing_mm=3.0, crop_size=32, split="random",
                output_dir=str(tmp_path / "run"))
    causes, error = [], info.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    messages = [str(e) for e in causes if isinstance(e, ValueError)]
    assert any("truncated" in m and str(bad) in m for m in messages), [str(e) for e in causes]
    assert not cache.exists() or list(cache.iterdir()) == []


def test_interrupted_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    image = tmp_path / "img.nii.gz"
    _save(image, np.random.default_rng(1).normal(size=(8, 8, 3)).astype(np.float32))
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    transform = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image")])
    cache = tmp_path / "cache"
    ds = AtomicPersistentDataset([{"image": str(image)}], transform=transform, cache_dir=cache)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a cache file")  # something reached the disk before the failure
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="simulated"):
        ds[0]
    assert list(cache.iterdir()) == []  # neither the final file nor the temporary one
    monkeypatch.setattr(torch, "save", real_save)
    first = ds[0]
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt" and not files[0].name.startswith(".")
    again = AtomicPersistentDataset([{"image": str(image)}], transform=transform, cache_dir=cache)[0]
    torch.testing.assert_close(torch.as_tensor(again["image"]), torch.as_tensor(first["image"]))


# ------------------------------------------------------------------------------------------------
# degenerate labels and pseudo-labels: warn once, keep training, finite loss
# ------------------------------------------------------------------------------------------------

SIZE = 32


class _BackgroundEverywhere(torch.nn.Module):
    """Logits ``[B, C, H, W]`` that make every pixel background."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes, *x.shape[2:])
        logits[:, 0] = 10.0
        return logits


def _pool(n: int, seed: int, labeled: bool) -> SlicePool:
    """Bright discs of class 1 on noise; class 2 appears nowhere."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = torch.randint(10, 22, (n, 2, 1, 1), generator=gen)
    labels = ((yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2 < 36).to(torch.uint8)
    images = (0.2 + 0.7 * labels + 0.05 * torch.randn(n, SIZE, SIZE, generator=gen)).unsqueeze(1)
    return SlicePool(images=images.float(), labels=labels if labeled else None, volume_index=torch.arange(n) // 4,
                     slice_index=torch.arange(n) % 4, volume_ids=[f"v{i}" for i in range((n + 3) // 4)])


def test_absent_structure_and_background_pseudo_labels_warn_once(caplog):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, above all on a busy CPU
    try:
        _run_degenerate(caplog)
    finally:
        torch.set_num_threads(threads)


def _run_degenerate(caplog) -> None:
    torch.manual_seed(0)
    num_classes = 3
    net = ContrastiveHeadUNet(num_classes=num_classes, channels=(4, 8), embedding_dim=4)
    labeled, unlabeled = _pool(8, 1, True), _pool(8, 2, False)
    store = PseudoLabelStore(len(unlabeled), (SIZE, SIZE), volume_index=unlabeled.volume_index)
    refresh = PseudoLabelRefresh(store, unlabeled.images, _BackgroundEverywhere(num_classes), interval=4, start_iteration=4)
    monitor = DegenerateBatchMonitor(num_classes, interval=2, class_names=["background", "disc", "ring"])
    trainer = SemiSupervisedTrainer(
        device="cpu", max_epochs=3, epoch_length=4, network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        seg_loss=DiceLoss(to_onehot_y=True, softmax=True), labeled=labeled, unlabeled=unlabeled, pseudo_labels=store,
        contrastive_loss=PixelContrastiveLoss(num_classes, matching="inter"), warmup_iterations=4, batch_size=4,
        labeled_per_batch=2, lambda_cont=0.1, seed=0, train_handlers=[refresh, monitor],
    )
    losses: list[torch.Tensor] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].detach()))
    with caplog.at_level(logging.WARNING):
        trainer.run()
    assert trainer.state.iteration == 12 and len(losses) == 12
    assert all(bool(torch.isfinite(v)) for v in losses)
    assert int(store.labels.max()) == 0 and store.version == 2  # the pseudo-labels really are all background
    # every check (iterations 2, 4, ..., 12) saw the ring missing; pseudo-labels checked once per refresh
    assert monitor.counts["batch_missing"] == 6
    assert monitor.counts["pseudo_background_all"] == 2 and monitor.counts["labeled_pool_missing"] == 1
    assert monitor.counts["non_finite_loss"] == 0 and monitor.counts["pseudo_background_volumes"] == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("absent from every labeled slice of the batch" in m for m in messages) == 1
    assert sum("absent from every labeled slice:" in m and "'ring'" in m for m in messages) == 1
    assert sum("background everywhere" in m for m in messages) == 1


def test_monitor_reads_labels_only_at_checks_and_flags_partial_background():
    monitor = DegenerateBatchMonitor(3, interval=5)
    with pytest.raises(ValueError, match="interval"):
        DegenerateBatchMonitor(3, interval=0)
    with pytest.raises(ValueError, match="class_names"):
        DegenerateBatchMonitor(3, class_names=["a"])

    class FakeEngine:
        def __init__(self) -> None:
            self.seg_loss = lambda logits, labels: logits.sum() * 0
            self.logger = logging.getLogger("fake_engine")
            self.handlers: list = []
            self.state = type("S", (), {"iteration": 5, "output": {"loss": torch.tensor(float("nan"))}})()
            self.pseudo_labels = PseudoLabelStore(4, (2, 2), volume_index=torch.tensor([0, 0, 1, 1]))

        def add_event_handler(self, event, handler) -> None:
            self.handlers.append((event, handler))

    engine = FakeEngine()
    monitor.attach(engine)
    engine.seg_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 1, 2, 2))  # the wrapped loss still computes
    assert monitor.recorder.last_labels is not None
    engine.pseudo_labels.update(torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]))
    monitor(engine)
    assert monitor.counts["batch_missing"] == 1  # class 2 absent from the recorded labels
    assert monitor.counts["pseudo_background_volumes"] == 1 and monitor.counts["pseudo_background_all"] == 0
    assert monitor.counts["non_finite_loss"] == 1
    monitor(engine)  # same store version: not re-checked
    assert monitor.counts["pseudo_background_volumes"] == 1
