"""Static parts of the bundles in ``bundles/``: metadata, logging config, licence files, and the
offline checks of :mod:`bundle_checks`."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plc_monai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_checks import check_config_properties, metadata_file, verify_bundle_metadata  # noqa: E402
from plc_monai.data.specs import get_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
SCHEMA = REPO / ".." / "shared" / "schema" / "meta_schema_20240725.json"
NAMES = ("acdc", "prostate", "mmwhs")

# Spelled-out channel names used in the metadata for the short class names of plc_monai.data.specs.
# Checked entry by entry, so a swapped class order in either place fails.
LONG_NAMES = {
    "background": "background",
    "RV": "RV",
    "LV": "LV",
    "Myo": "myocardium",
    "PZ": "peripheral zone",
    "TZ": "transition zone",
    "LA": "left atrium",
    "RA": "right atrium",
    "AA": "ascending aorta",
    "PA": "pulmonary artery",
}
# mmwhs writes the ventricles out in full; acdc keeps the RV/LV abbreviations.
LONG_NAMES_MMWHS = {**LONG_NAMES, "RV": "right ventricle", "LV": "left ventricle"}
CITATION = {"acdc": "Bernard", "prostate": "Antonelli", "mmwhs": "Zhuang"}

needs_schema = pytest.mark.skipif(not SCHEMA.is_file(), reason=f"schema copy {SCHEMA} not available")


def _meta(name: str) -> dict:
    return json.loads(metadata_file(BUNDLES / name).read_text(encoding="utf-8"))


def _copy_bundle(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(BUNDLES / name, target)
    return target


def _rewrite_meta(bundle: Path, **changes) -> None:
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta, indent=4), encoding="utf-8")


# --------------------------------------------------------------------------- metadata content


@pytest.mark.parametrize("name", NAMES)
def test_metadata_fields(name):
    meta = _meta(name)
    assert meta["schema"].endswith("/meta_schema_20240725.json")
    assert meta["schema"].startswith("https://")
    assert meta["version"] in meta["changelog"]
    assert meta["monai_version"] == "1.6.1"
    assert meta["pytorch_version"] == "2.13.0"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["numpy_version"])
    # MONAI renamed optional_packages_version; the 20240725 schema requires the new key only.
    assert "optional_packages_version" not in meta
    packages = meta["required_packages_version"]
    assert set(packages) == {"nibabel", "pytorch-ignite", "itk-filtering", "fire", "plc_monai"}
    assert packages["plc_monai"] == plc_monai.__version__
    assert meta["data_type"] == "nibabel"
    assert any("Chaitanya" in ref for ref in meta["references"])
    assert any(CITATION[name] in ref for ref in meta["references"])
    assert "inter-image" in meta["description"] and "semi-supervised" in meta["task"].lower()
    for key in ("name", "task", "description", "authors", "copyright", "data_source", "intended_use"):
        assert isinstance(meta[key], str) and meta[key].strip(), key
    for key in ("image_classes", "label_classes", "pred_classes"):
        assert isinstance(meta[key], str) and meta[key].strip(), key
    # nothing has been measured for these bundles yet: no scores may be claimed
    assert "eval_metrics" not in meta


@pytest.mark.parametrize("name", NAMES)
def test_network_data_format_matches_spec(name):
    spec = get_spec(name)
    fmt = _meta(name)["network_data_format"]
    # MONAI Label takes the first input / output key as image / pred key; Deploy maps them by name.
    assert list(fmt["inputs"]) == ["image"]
    assert list(fmt["outputs"]) == ["pred"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]

    assert image["type"] == "image" and image["format"] == "magnitude" and image["modality"] == spec.modality
    assert image["num_channels"] == 1 == len(image["channel_def"])
    assert image["channel_def"] == {"0": "image"}
    assert image["spatial_shape"] == list(spec.crop_size)
    assert image["dtype"] == "float32" and image["value_range"] == [0, 1] and image["is_patch_data"] is False

    assert pred["type"] == "image" and pred["format"] == "segmentation"
    assert pred["num_channels"] == spec.num_classes == len(pred["channel_def"])
    assert pred["spatial_shape"] == image["spatial_shape"]
    assert pred["dtype"] == "float32" and pred["value_range"] == [0, 1] and pred["is_patch_data"] is False
    names = LONG_NAMES_MMWHS if name == "mmwhs" else LONG_NAMES
    expected = {str(k): names[c] for k, c in enumerate(spec.class_names)}
    assert pred["channel_def"] == expected
    assert pred["channel_def"]["0"] == "background"


# --------------------------------------------------------------------------- schema validation


@needs_schema
@pytest.mark.parametrize("name", NAMES)
def test_metadata_validates_against_schema(name):
    verify_bundle_metadata(BUNDLES / name, SCHEMA)


@needs_schema
def test_invalid_metadata_is_rejected(tmp_path):
    missing = _copy_bundle("acdc", tmp_path / "missing")
    _rewrite_meta(missing, required_packages_version=None)
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_bundle_metadata(missing, SCHEMA)

    # the pre-2024 key name is not accepted by the 20240725 schema
    old_key = _copy_bundle("acdc", tmp_path / "old_key")
    _rewrite_meta(old_key, required_packages_version=None, optional_packages_version={"nibabel": "5.4.2"})
    with pytest.raises(ValueError, match="required_packages_version"):
        verify_bundle_metadata(old_key, SCHEMA)

    wrong_type = _copy_bundle("acdc", tmp_path / "wrong_type")
    _rewrite_meta(wrong_type, references="not a list")
    with pytest.raises(ValueError, match="Failed validating"):
        verify_bundle_metadata(wrong_type, SCHEMA)

    no_changelog = _copy_bundle("acdc", tmp_path / "no_changelog")
    _rewrite_meta(no_changelog, version="0.2.0")
    with pytest.raises(ValueError, match="changelog"):
        verify_bundle_metadata(no_changelog, SCHEMA)


def test_verify_bundle_metadata_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        verify_bundle_metadata(tmp_path / "nowhere", tmp_path / "schema.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        verify_bundle_metadata(tmp_path / "empty", tmp_path / "schema.json")
    with pytest.raises(FileNotFoundError, match="schema file"):
        verify_bundle_metadata(BUNDLES / "acdc", tmp_path / "schema.json")


def _run_cli(metas: dict[str, Path], schema: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Run ``python -m monai.bundle verify_metadata`` for each metadata file, concurrently."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = {
        key: subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", "verify_metadata"]
            + ["--meta_file", str(meta), "--filepath", str(schema)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for key, meta in metas.items()
    }
    outputs = {key: proc.communicate(timeout=180)[0] for key, proc in procs.items()}
    return {key: proc.returncode for key, proc in procs.items()}, outputs


def _schema_copy(tmp_path: Path) -> Path:
    schema = tmp_path / "schema" / "meta_schema_20240725.json"
    schema.parent.mkdir()
    shutil.copyfile(SCHEMA, schema)
    return schema


@needs_schema
def test_cli_verify_metadata_offline(tmp_path):
    """``python -m monai.bundle verify_metadata`` with ``--filepath`` at a local schema copy: no download."""
    schema = _schema_copy(tmp_path)
    broken = _copy_bundle("prostate", tmp_path / "broken")
    _rewrite_meta(broken, network_data_format=None)
    codes, outputs = _run_cli({"acdc": metadata_file(BUNDLES / "acdc"), "broken": metadata_file(broken)}, schema)
    assert codes["acdc"] == 0, outputs["acdc"]
    assert "skipped downloading" in outputs["acdc"]
    assert "metadata is verified with no error" in outputs["acdc"]
    assert codes["broken"] != 0
    assert "network_data_format" in outputs["broken"]


@pytest.mark.slow
@needs_schema
def test_cli_verify_metadata_other_bundles(tmp_path):
    schema = _schema_copy(tmp_path)
    codes, outputs = _run_cli({name: metadata_file(BUNDLES / name) for name in ("prostate", "mmwhs")}, schema)
    for name, code in codes.items():
        assert code == 0, outputs[name]
        assert "metadata is verified with no error" in outputs[name]


# --------------------------------------------------------------------------- logging.conf, licences


@pytest.mark.parametrize("name", NAMES)
def test_logging_conf(name):
    path = BUNDLES / name / "configs" / "logging.conf"
    ini = configparser.RawConfigParser()
    ini.read(path, encoding="utf-8")
    assert ini.get("logger_root", "level") == "INFO"
    assert ini.get("handler_consoleHandler", "class") == "StreamHandler"
    assert ini.get("handler_consoleHandler", "args") == "(sys.stdout,)"
    assert ini.get("formatter_fullFormatter", "format") == "%(asctime)s - %(name)s - %(levelname)s - %(message)s"

    # MONAI 1.6 refuses logging files whose class=/args= would run code before applying them.
    from monai.bundle import workflows

    reject = getattr(workflows, "_reject_executable_logging_config", None)
    if reject is not None:
        reject(str(path))

    # Apply it with logging.config.fileConfig in a fresh interpreter (nothing to restore here) and
    # check what a log record looks like on stdout.
    script = (
        "import logging, logging.config, sys\n"
        "logging.config.fileConfig(sys.argv[1])\n"
        "root = logging.getLogger()\n"
        "assert root.level == logging.INFO, root.level\n"
        "assert len(root.handlers) == 1 and root.handlers[0].stream is sys.stdout\n"
        "logging.getLogger('plc.check').debug('hidden')\n"
        "logging.getLogger('plc.check').info('shown')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - plc\.check - INFO - shown", lines[0])


@pytest.mark.parametrize("name", NAMES)
def test_licence_files(name):
    licence = (BUNDLES / name / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    data_licence = (BUNDLES / name / "docs" / "data_license.txt").read_text(encoding="utf-8")
    assert data_licence.strip()
    assert CITATION[name] in data_licence
    assert "official" in data_licence and "summary" in data_licence


# --------------------------------------------------------------------------- check_config_properties

_TRAIN = {
    "imports": ["$import numpy as np"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "dataset_dir": ".",
    "val_interval": 1,
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 4,
        "channels": [4, 8],
        "strides": [2],
    },
    "network": "$@network_def.to(@device)",
    "train": {
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': np.zeros((1, 8, 8), 'float32'), 'label': np.zeros((1, 8, 8), 'float32')}]",
        },
        "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 1},
        "inferer": {"_target_": "SimpleInferer"},
        "handlers": [
            {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "interval": "@val_interval"}
        ],
        "trainer": {
            "_target_": "SupervisedTrainer",
            "max_epochs": 1,
            "device": "@device",
            "train_data_loader": "@train#dataloader",
            "network": "@network",
            "optimizer": "$torch.optim.SGD(@network.parameters(), lr=0.1)",
            "loss_function": "$torch.nn.MSELoss()",
            "inferer": "@train#inferer",
            "train_handlers": "@train#handlers",
        },
    },
    "validate": {
        "dataset": "@train#dataset",
        "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1},
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@validate#dataloader",
            "network": "@network",
        },
    },
    "run": ["$@train#trainer.run()"],
}

_INFER = {
    "imports": ["$import numpy as np"],
    "bundle_root": ".",
    "device": "$torch.device('cpu')",
    "dataset_dir": ".",
    "network_def": _TRAIN["network_def"],
    "network": "$@network_def.to(@device)",
    "dataset": {"_target_": "Dataset", "data": "$[{'image': np.zeros((1, 8, 8), 'float32')}]"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1},
    "inferer": {"_target_": "SimpleInferer"},
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
    },
    "run": ["$@evaluator.run()"],
}


def _toy_bundle(root: Path, configs: dict[str, dict]) -> Path:
    bundle = root / "toy"
    (bundle / "configs").mkdir(parents=True)
    shutil.copyfile(metadata_file(BUNDLES / "acdc"), bundle / "configs" / "metadata.json")
    shutil.copyfile(BUNDLES / "acdc" / "configs" / "logging.conf", bundle / "configs" / "logging.conf")
    for file_name, content in configs.items():
        (bundle / "configs" / file_name).write_text(json.dumps(content, indent=4), encoding="utf-8")
    return bundle


def test_check_config_properties(tmp_path):
    # a handler list that is not referenced through the standard id `train#handlers`
    wrong_id = json.loads(json.dumps(_TRAIN))
    wrong_id["my_handlers"] = wrong_id["train"].pop("handlers")
    wrong_id["train"]["trainer"]["train_handlers"] = "@my_handlers"
    evaluate = {"run": ["$@validate#evaluator.run()"]}
    no_inferer = {k: v for k, v in _INFER.items() if k != "inferer"}
    no_inferer["evaluator"] = {k: v for k, v in _INFER["evaluator"].items() if k != "inferer"}
    bundle = _toy_bundle(
        tmp_path,
        {
            "train.json": _TRAIN,
            "evaluate.json": evaluate,
            "wrong_id.json": wrong_id,
            "inference.json": _INFER,
            "no_inferer.json": no_inferer,
        },
    )
    override = {"bundle_root": str(bundle), "dataset_dir": str(tmp_path)}
    assert check_config_properties(bundle, "train.json", "train", **override) == []
    assert check_config_properties(bundle, ["train.json", "evaluate.json"], "train", **override) == []
    assert check_config_properties(bundle, "wrong_id.json", "train", **override) == ["train_handlers"]
    assert check_config_properties(bundle, "inference.json", "infer", **override) == []
    assert check_config_properties(bundle, bundle / "configs" / "no_inferer.json", "infer", **override) == ["inferer"]
    # meta properties (version, monai_version, ...) come from metadata.json
    _rewrite_meta(bundle, monai_version=None)
    assert check_config_properties(bundle, "inference.json", "infer", **override) == ["monai_version"]


def test_check_config_properties_bad_input(tmp_path):
    bundle = _toy_bundle(tmp_path, {"train.json": _TRAIN})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        check_config_properties(bundle, ["train.json", "missing.json"], "train")
    with pytest.raises(ValueError, match="at least one"):
        check_config_properties(bundle, [], "train")
    with pytest.raises(ValueError, match="workflow type"):
        check_config_properties(bundle, "train.json", "deploy")
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        check_config_properties(tmp_path, "train.json", "train")


@pytest.mark.parametrize(
    "override, config_id",
    [
        ({"train#handlers#0#interval": 1}, "train#handlers#0#interval"),
        ({"train#trainer#postprocessing": {"_target_": "Compose", "transforms": []}}, "train#trainer#postprocessing"),
        ({"train#handlers": [{"_target_": "StatsHandler"}, "$None"]}, "train#handlers"),
    ],
)
def test_check_config_properties_crashing_shapes(tmp_path, override, config_id):
    """Shapes on which MONAI's own check_properties raises AttributeError / TypeError get a clear ValueError."""
    bundle = _toy_bundle(tmp_path, {"train.json": _TRAIN})
    with pytest.raises(ValueError, match=re.escape(f"'{config_id}")):
        check_config_properties(bundle, "train.json", "train", bundle_root=str(bundle), **override)
