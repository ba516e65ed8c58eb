"""Real scans through the real bundle: a short supervised run on two real ACDC volumes must learn.

A preprocessing or label-mapping error on real files (wrong slice axis, labels remapped, intensities
out of range, predictions not inverted to the native grid) leaves the Dice of a trained network near
the Dice of an untrained one; phantom data cannot catch it. Skipped without ``../shared/data/acdc_dev``.
"""

from __future__ import annotations

import json

import pytest
import torch

from bundle_helpers import SHARED, config_arg, read_json, run_bundle
from plc_monai.networks import ContrastiveHeadUNet

ACDC_DEV = SHARED / "data" / "acdc_dev" / "training"
CHANNELS = [8, 16, 32, 64, 64, 64]
SPLIT = {"labeled": ["001", "003"], "validation": ["004"], "unlabeled": [], "test": ["005", "006"], "seed": None,
         "source": "test_real_data"}

pytestmark = pytest.mark.skipif(not ACDC_DEV.is_dir(), reason="../shared/data/acdc_dev is not here")


def _overrides(tmp_path, **extra) -> dict:
    split = tmp_path / "split.json"
    split.write_text(json.dumps(SPLIT))
    return {
        "bundle_root": "bundles/acdc", "dataset_dir": str(ACDC_DEV), "split": str(split), "n4": False,
        "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "run" / "models"),
        "cache_dir": str(tmp_path / "cache"), "crop_size": 96, "spacing_mm": 2.734, "channels": CHANNELS,
        "warmup_iterations": 500, "num_rounds": 0, "val_interval": 50, "log_interval": 50, "save_interval": 500,
        "batch_size": 8, "labeled_per_batch": 4, **extra,
    }


def _test_dice(tmp_path, ckpt, name: str) -> dict:
    overrides = _overrides(tmp_path, ckpt_file=str(ckpt), eval_dir=str(tmp_path / f"eval_{name}"))
    run_bundle(["run", "run", "--config_file", config_arg("acdc", "train", "evaluate")], overrides).check()
    return read_json(tmp_path / f"eval_{name}" / "summary.json")


@pytest.mark.slow
def test_short_training_on_real_acdc_beats_an_untrained_network(tmp_path) -> None:
    # about 90 s on a quiet 2-core CPU; the long timeout only keeps a busy machine from failing it
    run_bundle(["run", "training", "--config_file", config_arg("acdc", "train")], _overrides(tmp_path), timeout=1800).check()
    trained = _test_dice(tmp_path, tmp_path / "run" / "models" / "model.pt", "trained")

    torch.manual_seed(0)
    untrained_file = tmp_path / "untrained.pt"
    torch.save(ContrastiveHeadUNet(num_classes=4, channels=CHANNELS).state_dict(), untrained_file)
    untrained = _test_dice(tmp_path, untrained_file, "untrained")

    fg_trained = trained["mean_foreground_dice"]["mean"]
    fg_untrained = untrained["mean_foreground_dice"]["mean"] or 0.0
    per_structure = {s["structure"]: s["dice_mean"] for s in trained["structures"]}
    print(f"real ACDC, 500 supervised iterations: test Dice {fg_trained:.3f} {per_structure}, untrained {fg_untrained:.3f}")
    assert fg_trained > fg_untrained + 0.3, (fg_trained, fg_untrained)
    assert fg_trained > 0.45, fg_trained
    # every structure is found: a label-mapping error loses one of them
    assert set(per_structure) == {"RV", "Myo", "LV"}
    assert min(per_structure.values()) > 0.2, per_structure
