"""The three bundles' configs and their training / evaluation entry points, run on tiny phantoms.

Config-level checks run in this process. Training and evaluation run the real command line
(``python -m monai.bundle run ...``) as subprocesses, once per bundle and session
(:mod:`bundle_helpers`), with ``--bundle_root`` in a temporary folder so nothing is written into
the repository. Metadata validation lives in ``test_bundle_metadata.py``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_checks import check_config_properties  # noqa: E402
from bundle_helpers import (  # noqa: E402
    BUNDLES,
    NAMES,
    TINY_CHANNELS,
    TINY_CROP,
    TINY_SCHEDULE,
    TINY_TOTAL_ITERATIONS,
    config_arg,
    config_file,
    logged_metric_values,
    logged_progress_iterations,
    native_label,
    phantom_dataset,
    phantom_entries,
    read_json,
    resumed_iterations,
    run_bundle,
    tiny_overrides,
    train_overrides,
    trained_bundle,
)

from plc_monai.data.specs import get_spec  # noqa: E402
from plc_monai.evaluation import evaluate_volume  # noqa: E402

CONFIG_SETS = {
    "train": ["train"],
    "train+scheme_intra": ["train", "scheme_intra"],
    "train+evaluate": ["train", "evaluate"],
    "train+multi_gpu_train": ["train", "multi_gpu_train"],
    "inference": ["inference"],
}


def _parser(name: str, configs: list[str], **override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(config_file(name, c)) for c in configs])
    parser.read_meta(str(BUNDLES / name / "configs" / "metadata.json"))
    for key, value in override.items():
        parser[key] = value
    return parser


# ------------------------------------------------------------------------------------ 1. configs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("config_set", list(CONFIG_SETS))
def test_every_reference_resolves(name, config_set):
    """Merged configs parse, and every ``@id`` / ``%id`` (also inside ``$`` expressions) names an existing id."""
    parser = _parser(name, CONFIG_SETS[config_set])
    parser.parse(reset=True)
    # resolving the root without instantiating or evaluating visits every item and raises
    # "the referring item `@x` is not defined" for a dangling reference
    content = parser.get_parsed_content("", instantiate=False, eval_expr=False)
    assert isinstance(content, dict) and "network_def" in content
    assert "run" in parser, f"{config_set} of {name} has no 'run' entry"
    if config_set.startswith("train"):
        assert parser["training"] == parser["run"], "the documented `run training` alias must equal `run`"


def test_dangling_reference_is_caught():
    """Negative control of the check above: a reference to a missing id inside an expression raises."""
    parser = _parser("acdc", ["train"])
    parser["train#pseudo_label_refresh#output_dir"] = "$@no_such_id + '/pseudo_labels'"
    parser.parse(reset=True)
    with pytest.raises(ValueError, match="no_such_id"):
        parser.get_parsed_content("", instantiate=False, eval_expr=False)


@pytest.mark.parametrize("name", NAMES)
def test_train_handlers_are_target_dicts(name):
    """MONAI's property check and MONAI Label index ``h['_target_']`` of every ``train#handlers`` entry."""
    for configs in (["train"], ["train", "evaluate"], ["train", "scheme_intra"]):
        handlers = _parser(name, configs)["train#handlers"]
        assert isinstance(handlers, list) and handlers
        for index, handler in enumerate(handlers):
            where = f"{name} {configs} train#handlers#{index}"
            assert isinstance(handler, dict) and "_target_" in handler, f"{where}: {handler!r}"
        validation = [h for h in handlers if h["_target_"] == "ValidationHandler"]
        assert len(validation) == 1
        assert validation[0]["validator"] == "@validate#evaluator" and validation[0]["interval"] == "@val_interval"


def test_no_config_addresses_a_handler_by_list_position():
    """Overrides name handlers by id (``train#pseudo_label_refresh#...``), never as ``train#handlers#<index>``."""
    position = re.compile(r"handlers#\d")
    files = sorted(path for name in NAMES for path in (BUNDLES / name / "configs").glob("**/*.json"))
    assert len(files) >= 3 * 12
    for path in files:
        assert not position.search(path.read_text(encoding="utf-8")), f"{path} addresses a handler by position"


@pytest.mark.parametrize("name", NAMES)
def test_refresh_handler_is_named_and_listed_once(name):
    """``train#handlers`` lists the refresh handler by reference; the two-step methods override it by id."""
    parser = _parser(name, ["train", "methods/two_step_semi"])
    entries = [h for h in parser["train#handlers"] if "pseudo_label_refresh" in h["_target_"]]
    assert entries == [{"_target_": "@train#pseudo_label_refresh", "_mode_": "callable"}]
    assert parser["train#pseudo_label_refresh#_target_"] == "plc_monai.handlers.PseudoLabelRefresh"
    assert parser.get_parsed_content("train#pseudo_label_refresh#num_refreshes") == 1
    assert _parser(name, ["train"]).get_parsed_content("train#pseudo_label_refresh#num_refreshes") == 3


@pytest.mark.parametrize("name", NAMES)
def test_derived_defaults(name):
    """``num_classes`` is counted from ``class_names``; ``scheme`` follows ``matching`` unless set."""
    parser = _parser(name, ["train"])
    assert parser["num_classes"] == "$len(@class_names)"
    assert parser.get_parsed_content("num_classes") == len(parser["class_names"])
    assert _parser(name, ["inference"]).get_parsed_content("num_classes") == len(parser["class_names"])
    assert parser.get_parsed_content("scheme") == "inter"
    assert _parser(name, ["train"], matching="intra").get_parsed_content("scheme") == "intra"
    assert _parser(name, ["train", "methods/plc_intra"]).get_parsed_content("scheme") == "plc_intra"
    assert "inferer" not in parser["train#trainer"]


@pytest.mark.parametrize("name", NAMES)
def test_compile_step_switch_is_off_by_default_and_selects_graph_safe_losses(name):
    """``compile_step`` (off by default) gives the trainer the graph-safe Dice and an unchecked contrastive loss."""
    from monai.losses import DiceLoss

    from plc_monai.dice import GraphSafeDiceLoss

    default = _parser(name, ["train"])
    assert default.get_parsed_content("compile_step") is False
    assert default["train#trainer"]["compile_step"] == "@compile_step"
    assert isinstance(default.get_parsed_content("train#trainer#seg_loss"), DiceLoss)
    assert default.get_parsed_content("contrastive_loss").check_inputs == (not torch.cuda.is_available())
    compiled = _parser(name, ["train"], compile_step=True)
    assert isinstance(compiled.get_parsed_content("train#trainer#seg_loss"), GraphSafeDiceLoss)
    assert compiled.get_parsed_content("contrastive_loss").check_inputs is False


def test_demo_config_merges_after_train_json(tmp_path):
    """``demo.json`` holds plain values (also usable as overrides) and passes the start-up checks."""
    from plc_monai.cli import demo_config

    path = demo_config()
    assert path == config_file("acdc", "demo")
    values = read_json(path)
    assert values and not any(isinstance(v, str) and v[:1] in "$@%" for v in values.values())
    parser = _parser("acdc", ["train", "demo"], output_dir=str(tmp_path / "run"))
    for key, value in values.items():
        assert parser.get_parsed_content(key) == value, key
    parser.get_parsed_content("initialize")  # the start-up checks accept the demo's values
    crop = values["crop_size"]
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        assert network(torch.zeros(1, 1, crop, crop)).shape == (1, 4, crop, crop)


@pytest.mark.parametrize("name", NAMES)
def test_config_properties_on_phantom(name, tmp_path, tmp_path_factory):
    """``check_config_properties`` reports nothing for train, train+evaluate, train+intra and inference."""
    dataset_dir = phantom_dataset(name, tmp_path_factory)
    override = train_overrides(name, tmp_path / "bundle", dataset_dir)
    bundle = BUNDLES / name
    assert check_config_properties(bundle, "train.json", "train", **override) == []
    assert check_config_properties(bundle, ["train.json", "evaluate.json"], "train", **override) == []
    assert check_config_properties(bundle, ["train.json", "scheme_intra.json"], "train", **override) == []
    images = tmp_path / "images"
    images.mkdir()
    entry = phantom_entries(name, dataset_dir)[0]
    (images / Path(entry["image"]).name).symlink_to(entry["image"])
    infer_override = {"bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(images), **tiny_overrides(name)}
    assert check_config_properties(bundle, "inference.json", "infer", **infer_override) == []


def test_multi_gpu_config_properties_single_process(tmp_path, tmp_path_factory, monkeypatch):
    """``train.json + multi_gpu_train.json`` initialises a 1-process gloo group and passes the property check."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dataset_dir = phantom_dataset("acdc", tmp_path_factory)
    override = train_overrides("acdc", tmp_path / "bundle", dataset_dir)
    try:
        reported = check_config_properties(BUNDLES / "acdc", ["train.json", "multi_gpu_train.json"], "train", **override)
        assert dist.is_initialized() and dist.get_world_size() == 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert reported == []


@pytest.mark.parametrize("name", NAMES)
def test_scheme_selects_model_folder_and_matching(name, tmp_path):
    """The default ``ckpt_dir`` depends on ``scheme``: inter -> models/, intra -> models/intra/ (train and inference)."""
    root = str(tmp_path)
    inter = _parser(name, ["train"], bundle_root=root)
    intra = _parser(name, ["train", "scheme_intra"], bundle_root=root)
    assert Path(inter.get_parsed_content("ckpt_dir")) == tmp_path / "models"
    assert Path(intra.get_parsed_content("ckpt_dir")) == tmp_path / "models" / "intra"
    assert Path(intra.get_parsed_content("output_dir")) == tmp_path / "runs" / "intra"
    assert inter.get_parsed_content("contrastive_loss").matching == "inter"
    assert intra.get_parsed_content("contrastive_loss").matching == "intra"
    infer_inter = _parser(name, ["inference"], bundle_root=root)
    infer_intra = _parser(name, ["inference"], bundle_root=root, scheme="intra")
    assert Path(infer_inter.get_parsed_content("ckpt_file")) == tmp_path / "models" / "model.pt"
    assert Path(infer_intra.get_parsed_content("ckpt_file")) == tmp_path / "models" / "intra" / "model.pt"


@pytest.mark.parametrize("spelling", ["false", "true"])
def test_switches_spelled_in_lower_case_on_the_command_line(spelling, tmp_path):
    """``--n4 false`` reaches the config as the *string* 'false' (Python Fire keeps non-literals as text),
    which Python reads as true. The bundle's start-up check (``initialize``) rejects it, naming the id
    and the spelling to use, before any data is read."""
    parser = _parser("acdc", ["train"], bundle_root=str(tmp_path), channels=list(TINY_CHANNELS), n4=spelling,
                     resume=spelling, save_pseudo_labels=spelling)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("initialize")
    chain, error = [], info.value
    while error is not None:
        chain.append(error)
        error = error.__cause__
    messages = " ".join(str(x) for x in chain if isinstance(x, ValueError))
    for name in ("n4", "resume", "save_pseudo_labels"):
        assert f"'{name}' = '{spelling}'" in messages, messages
    assert "True or False" in messages


# ------------------------------------------------------------------------------ 2./3. training


def _network(name: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file(name, "inference")))
    parser["channels"] = list(TINY_CHANNELS)
    return parser.get_parsed_content("network_def")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_training_end_to_end(name, tmp_path_factory):
    """``run training`` on the phantom: checkpoints, two pseudo-label rounds, Dice in [0, 1], full schedule."""
    trained = trained_bundle(name, tmp_path_factory)
    ckpt = trained.ckpt_dir
    for file_name in ("checkpoint.pt", "model.pt", "model_warmup.pt"):
        assert (ckpt / file_name).is_file(), f"{file_name} missing in {ckpt}"
    assert not any(trained.bundle_root.glob("models/intra")), "the inter scheme must not write models/intra"

    state = torch.load(ckpt / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == TINY_TOTAL_ITERATIONS
    network = _network(name)
    for file_name in ("model.pt", "model_warmup.pt"):
        weights = torch.load(ckpt / file_name, map_location="cpu", weights_only=True)
        network.load_state_dict(weights, strict=True)  # a plain state dict of network_def
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())

    output = trained.output
    assert "pseudo-label refresh 1 at iteration 3" in output
    assert "pseudo-label refresh 2 at iteration 5" in output
    assert "pseudo-label refresh 3" not in output  # num_rounds=2
    assert max(logged_progress_iterations(output)) == TINY_TOTAL_ITERATIONS

    dice = logged_metric_values(output, "val_mean_dice")
    assert dice, "no validation Dice was logged"
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in dice), dice

    split = read_json(trained.output_dir / "split.json")
    assert split["unlabeled"], "the phantom split has no unlabeled volume"
    num_classes = get_spec(name).num_classes
    for round_ in (1, 2):
        folder = trained.output_dir / "pseudo_labels" / f"round_{round_}"
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(f"{i}.nii.gz" for i in split["unlabeled"])
        for path in folder.glob("*.nii.gz"):
            labels = np.asarray(nib.load(path).dataobj)
            assert labels.ndim == 3 and labels.shape[:2] == (TINY_CROP, TINY_CROP)
            assert labels.min() >= 0 and labels.max() < num_classes


@pytest.mark.slow
def test_training_resumes_after_interruption(tmp_path_factory):
    """ACDC trains in two commands: stopped at iteration 4, the same command continues from there."""
    trained = trained_bundle("acdc", tmp_path_factory)
    first, second = trained.runs
    assert resumed_iterations(first.output) == []
    assert max(logged_progress_iterations(first.output)) == 4
    assert "pseudo-label refresh 1 at iteration 3" in first.output
    assert resumed_iterations(second.output) == [4], second.tail()
    # nothing before the checkpoint was repeated: no progress line and no first refresh in the second run
    assert min(logged_progress_iterations(second.output)) > 4
    assert "pseudo-label refresh 1 " not in second.output
    assert "pseudo-label refresh 2 at iteration 5" in second.output


@pytest.mark.slow
def test_intra_scheme_trains_into_own_folder(tmp_path, tmp_path_factory):
    """``train.json + scheme_intra.json`` writes models/intra and runs/intra under bundle_root, nothing in models/."""
    name = "prostate"
    dataset_dir = phantom_dataset(name, tmp_path_factory)
    root = tmp_path / "bundle"
    overrides = train_overrides(name, root, dataset_dir, num_rounds=1)
    run = run_bundle(["run", "training", "--config_file", config_arg(name, "train", "scheme_intra")], overrides).check()
    intra = root / "models" / "intra"
    for file_name in ("checkpoint.pt", "model.pt", "model_warmup.pt"):
        assert (intra / file_name).is_file(), f"{file_name} missing in {intra}"
    assert sorted(p.name for p in (root / "models").iterdir()) == ["intra"]
    assert (root / "runs" / "intra" / "split.json").is_file()
    assert "pseudo-label refresh 1 at iteration 3" in run.output


def _monai_label_overrides(name: str, root: Path, labeled: list, validation: list, pretrained: Path | None) -> dict:
    """The overrides MONAI Label's ``BundleTrainTask`` passes (``device`` aside), plus ``train#unlabeled_dataset#data``.

    MONAI Label sets ``bundle_root``, ``train#trainer#max_epochs``, ``train#dataset#data`` (labelled
    studies only), ``train#handlers`` (the bundle's own list with a ``CheckpointLoader`` of
    ``models/<model_filename>`` inserted first when pretrained) and ``validate#dataset#data``.
    """
    handlers = _parser(name, ["train"])["train#handlers"]
    if pretrained is not None:
        loader = {"_target_": "CheckpointLoader", "load_path": str(pretrained), "load_dict": {"model": "$@network"}, "strict": False}
        handlers = [loader, *handlers]
    overrides = train_overrides(name, root, root / "no_such_dataset", num_rounds=1)
    overrides.update({
        "train#trainer#max_epochs": 2,
        "train#dataset#data": labeled,
        "train#handlers": handlers,
        "validate#dataset#data": validation,
        "train#unlabeled_dataset#data": [],
    })
    return overrides


@pytest.mark.slow
def test_supervised_only_training_with_empty_unlabeled_list(tmp_path, tmp_path_factory):
    """MONAI Label's training path with ``train#unlabeled_dataset#data`` = [] trains warm-up + a supervised joint phase.

    ``dataset_dir`` points at a missing folder: once these ids are overridden nothing reads it.
    The pretrained weights come from the session's trained ACDC model, as MONAI Label's
    ``CheckpointLoader`` would load ``models/model.pt``.
    """
    name = "acdc"
    trained = trained_bundle(name, tmp_path_factory)
    entries = phantom_entries(name, trained.dataset_dir)
    labeled = [{"image": e["image"], "label": e["label"]} for e in entries[:2]]
    validation = [{"image": e["image"], "label": e["label"]} for e in entries[2:3]]
    root = tmp_path / "bundle"
    overrides = _monai_label_overrides(name, root, labeled, validation, pretrained=trained.model)
    run = run_bundle(["run", "--config_file", config_arg(name, "train")], overrides).check()
    assert f"Restored all variables from {trained.model}" in run.output
    assert "no unlabeled slices" in run.output
    for file_name in ("checkpoint.pt", "model.pt", "model_warmup.pt"):
        assert (root / "models" / file_name).is_file()
    iterations = logged_progress_iterations(run.output)
    assert max(iterations) == 2 * TINY_SCHEDULE["val_interval"]  # max_epochs 2 of val_interval iterations
    assert re.search(r"joint \| iteration \d+/\d+ \| seg_loss", run.output), "no joint-phase iteration was logged"
    assert not (root / "runs" / "inter" / "split.json").exists(), "the dataset_dir-based split must not be computed"


def test_monai_label_max_epochs_must_cover_warmup(tmp_path, tmp_path_factory):
    """MONAI Label's ``max_epochs`` counts ``val_interval``-iteration epochs; too few for the warm-up is an error."""
    name = "acdc"
    entries = phantom_entries(name, phantom_dataset(name, tmp_path_factory))
    labeled = [{"image": e["image"], "label": e["label"]} for e in entries[:1]]
    overrides = _monai_label_overrides(name, tmp_path / "bundle", labeled, labeled, pretrained=None)
    overrides.update({
        "warmup_iterations": 4,
        "train#trainer#max_epochs": 1,  # 2 iterations < 4
        "train#unlabeled_dataset#data": [{"image": entries[1]["image"]}],
    })
    parser = _parser(name, ["train"], **overrides)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#trainer")
    chain, error = [], info.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("exceed" in m and "iterations of the run" in m for m in chain), chain


# ---------------------------------------------------------------------------------- 5. evaluation


def _evaluate(name: str, tmp_path: Path, tmp_path_factory) -> tuple[Path, Path, object]:
    """Run train.json + evaluate.json (+ a file that only appends SaveImaged to the postprocessing)."""
    trained = trained_bundle(name, tmp_path_factory)
    evaluate = read_json(config_file(name, "evaluate"))
    post = json.loads(json.dumps(evaluate["validate#postprocessing"]))
    pred_dir = tmp_path / "pred"
    post["transforms"].append({
        "_target_": "SaveImaged", "keys": "pred", "output_dir": str(pred_dir), "output_postfix": "seg",
        "output_dtype": "$torch.uint8", "resample": False, "separate_folder": False, "print_log": False,
    })
    save_config = tmp_path / "save_predictions.json"
    save_config.write_text(json.dumps({"validate#postprocessing": post}), encoding="utf-8")
    eval_dir = tmp_path / "eval"
    configs = repr([str(config_file(name, "train")), str(config_file(name, "evaluate")), str(save_config)])
    overrides = train_overrides(name, trained.bundle_root, trained.dataset_dir, eval_dir=str(eval_dir))
    run = run_bundle(["run", "--config_file", configs], overrides).check()
    return eval_dir, pred_dir, run


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_evaluation_reports_match_direct_computation(name, tmp_path, tmp_path_factory):
    """Reports are written and their per-volume numbers equal ``evaluate_volume`` on the saved prediction."""
    eval_dir, pred_dir, run = _evaluate(name, tmp_path, tmp_path_factory)
    for file_name in ("per_volume.csv", "summary.json", "summary.md"):
        assert (eval_dir / file_name).is_file(), f"{file_name} missing in {eval_dir}"
    trained = trained_bundle(name, tmp_path_factory)
    split = read_json(trained.output_dir / "split.json")
    with open(eval_dir / "per_volume.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["volume"] for r in rows}) == sorted(split["test"])
    class_names = get_spec(name).class_names
    assert len(rows) == len(split["test"]) * (len(class_names) - 1)

    entries = {e["id"]: e for e in phantom_entries(name, trained.dataset_dir)}
    checked = 0
    for vol in split["test"]:
        entry = entries[vol]
        pred_path = pred_dir / (Path(entry["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
        assert pred_path.is_file(), f"no saved prediction {pred_path}; saved: {sorted(p.name for p in pred_dir.iterdir())}"
        pred_img = nib.load(pred_path)
        label_img = nib.load(entry["label"])
        pred = np.asarray(pred_img.dataobj).astype(np.int64)
        label = native_label(name, entry)
        assert pred.shape == label.shape and np.allclose(pred_img.affine, label_img.affine, atol=1e-4)
        spacing = [float(z) for z in label_img.header.get_zooms()[:3]]
        expected = evaluate_volume(pred, label, spacing, class_names)
        got = [r for r in rows if r["volume"] == vol]
        assert [r["structure"] for r in got] == [e["structure"] for e in expected]
        for exp, row in zip(expected, got):
            assert row["status"] == exp["status"]
            assert int(row["voxels_reference"]) == exp["voxels_reference"]
            assert int(row["voxels_prediction"]) == exp["voxels_prediction"]
            for key in ("dice", "hd95_mm", "asd_mm"):
                if exp[key] is None or (isinstance(exp[key], float) and math.isnan(exp[key])):
                    assert row[key] == "", (key, row[key])
                else:
                    assert float(row[key]) == pytest.approx(exp[key], rel=1e-5, abs=1e-6), (vol, key)
            checked += 1
    assert checked > 0

    summary = read_json(eval_dir / "summary.json")
    for structure in summary["structures"]:
        scored = [r for r in rows if r["structure"] == structure["structure"] and r["status"] != "absent_in_both"]
        values = [float(r["dice"]) for r in scored]
        if values:
            assert structure["dice_mean"] == pytest.approx(float(np.mean(values)), abs=1e-6)
    test_dice = logged_metric_values(run.output, "test_mean_dice")
    assert test_dice and all(0.0 <= v <= 1.0 for v in test_dice)
