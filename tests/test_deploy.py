"""Deployment paths of the bundles: TorchScript export, ``verify_net_in_out``, and the reads of MONAI Deploy / MONAI Label.

MONAI Deploy's ``MonaiBundleInferenceOperator`` and MONAI Label's ``BundleInferTask`` are not
installed in CI (they pull in Holoscan / SAM2); these tests perform the same steps on the exported
model and the bundle folder (see docs/deploy.md and the MONAI bundle conventions notes):

- Deploy: read ``extra/metadata.json`` and ``extra/inference.json`` from ``model.ts``, parse
  ``device``, ``inferer``, ``preprocessing`` and ``postprocessing``, drop transforms whose class name
  contains ``LoadImage`` / ``SaveImage``, run preprocessing on an in-memory image dict, the inferer
  with the TorchScript model on the batched image, and postprocessing on ``{pred: output[0]} +
  preprocessed inputs``.
- MONAI Label (``BundleInferTask``): ``configs/inference.json`` of the bundle folder with
  ``bundle_root`` overridden, ``network_def`` + ``models/model.pt`` (``checkpoint.get("model",
  checkpoint)``), labels ``{name.lower(): index}`` from the metadata's ``channel_def`` without
  background, ``preprocessing`` / ``inferer`` / ``postprocessing`` with ``SaveImaged`` removed
  (then ``Restored(keys=pred, ref_image=image)`` appended).
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_helpers import (  # noqa: E402
    BUNDLES,
    NAMES,
    TINY_CROP,
    config_file,
    inference_run,
    read_json,
    run_bundle,
    seg_name,
    session_cached,
    session_root,
    tiny_overrides,
    trained_bundle,
)

from plc_monai.data.specs import get_spec  # noqa: E402

DISALLOW_LOAD_SAVE = ("LoadImage", "SaveImage")


def _tiny_bundle_copy(name: str, dest: Path) -> Path:
    """A copy of the bundle's configs with the tiny sizes written into inference.json.

    ``ckpt_export`` stores the config *files* in ``model.ts`` (command-line overrides are not
    stored), so a model trained with other sizes is exported from an edited ``inference.json``.
    """
    configs = dest / "configs"
    configs.mkdir(parents=True)
    for file_name in ("metadata.json", "logging.conf"):
        shutil.copyfile(BUNDLES / name / "configs" / file_name, configs / file_name)
    inference = read_json(config_file(name, "inference"))
    inference.update(tiny_overrides(name))
    (configs / "inference.json").write_text(json.dumps(inference, indent=4), encoding="utf-8")
    return dest


def exported_model(name: str, tmp_path_factory) -> dict:
    """``python -m monai.bundle ckpt_export network_def`` of the session's tiny model (once per bundle)."""

    def export() -> dict:
        trained = trained_bundle(name, tmp_path_factory)
        bundle = _tiny_bundle_copy(name, session_root(tmp_path_factory) / f"deploy_{name}")
        (bundle / "models").mkdir()
        shutil.copyfile(trained.model, bundle / "models" / "model.pt")
        ts_path = bundle / "models" / "model.ts"
        run = run_bundle(
            ["ckpt_export", "network_def"],
            {
                "filepath": str(ts_path),
                "ckpt_file": str(bundle / "models" / "model.pt"),
                "meta_file": str(bundle / "configs" / "metadata.json"),
                "config_file": str(bundle / "configs" / "inference.json"),
                "bundle_root": str(bundle),
                **tiny_overrides(name),
            },
        ).check()
        return {"bundle": bundle, "ts": ts_path, "run": run}

    return session_cached(("exported", name), export)


def _network_from_config(name: str, bundle: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torchscript_export_matches_pytorch(name, tmp_path_factory):
    """``model.ts`` gives the logits of ``network_def`` + ``model.pt`` and carries metadata and inference config."""
    exported = exported_model(name, tmp_path_factory)
    ts_model = torch.jit.load(str(exported["ts"]), map_location="cpu").eval()
    network = _network_from_config(name, exported["bundle"])
    network.load_state_dict(torch.load(exported["bundle"] / "models" / "model.pt", weights_only=True), strict=True)
    network.eval()
    x = torch.rand(3, 1, TINY_CROP, TINY_CROP, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = network(x), ts_model(x)
    assert isinstance(got, torch.Tensor), "the exported forward must return one tensor (the logits)"
    assert got.shape == (3, get_spec(name).num_classes, TINY_CROP, TINY_CROP)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    with zipfile.ZipFile(exported["ts"]) as archive:
        extra = {Path(n).name: archive.read(n) for n in archive.namelist() if "/extra/" in n}
    assert json.loads(extra["inference.json"]) == read_json(exported["bundle"] / "configs" / "inference.json")
    meta = json.loads(extra["metadata.json"])
    assert meta["network_data_format"] == read_json(config_file(name, "metadata"))["network_data_format"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_verify_net_in_out_default_network(name):
    """``verify_net_in_out`` with the shipped sizes: one ``[1, 1, *spatial_shape]`` input, channels and dtype checked."""
    meta = read_json(config_file(name, "metadata"))
    assert len(meta["network_data_format"]["inputs"]["image"]["spatial_shape"]) == 2
    run = run_bundle(
        ["verify_net_in_out", "network_def"],
        {
            "meta_file": str(config_file(name, "metadata")),
            "config_file": str(config_file(name, "inference")),
            "device": "cpu",
        },
    ).check()
    assert "data shape of network is verified with no error" in run.output


def _filter(compose, disallowed=DISALLOW_LOAD_SAVE):
    """What the Deploy operator does: drop transforms whose class name contains a disallowed word."""
    from monai.transforms import Compose

    return Compose([t for t in compose.transforms if not any(word in type(t).__name__ for word in disallowed)])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_deploy_operator_reading_of_model_ts(name, tmp_path_factory, monkeypatch, tmp_path):
    """The Deploy operator's steps on ``model.ts`` reproduce the bundle's own inference output."""
    from monai.bundle import ConfigParser
    from monai.transforms import LoadImage, MapTransform
    from monai.utils import ensure_tuple

    exported = exported_model(name, tmp_path_factory)
    infer = inference_run(name, tmp_path_factory).check()
    monkeypatch.chdir(tmp_path)  # relative paths in the parsed config (output_dir) must not touch the repo

    with zipfile.ZipFile(exported["ts"]) as archive:
        names = archive.namelist()
        meta = json.loads(archive.read(next(n for n in names if n.endswith("extra/metadata.json"))))
        config = json.loads(archive.read(next(n for n in names if n.endswith("extra/inference.json"))))
    parser = ConfigParser()
    parser.read_meta(f=meta)
    parser.read_config(f=config)
    parser.parse()
    device = parser.get_parsed_content("device") if parser.get("device") is not None else torch.device("cpu")
    assert device.type in ("cpu", "cuda")
    inferer = parser.get_parsed_content("inferer")
    pre = _filter(parser.get_parsed_content("preprocessing"))
    post = _filter(parser.get_parsed_content("postprocessing"))
    assert isinstance(pre.transforms[0], MapTransform) and isinstance(post.transforms[0], MapTransform)
    input_name = next(iter(parser["_meta_"]["network_data_format"]["inputs"]))
    output_name = next(iter(parser["_meta_"]["network_data_format"]["outputs"]))
    assert (input_name, output_name) == ("image", "pred")

    model = torch.jit.load(str(exported["ts"]), map_location="cpu").eval()
    image_path = infer.extra["inputs"][0]
    with torch.no_grad():
        inputs = pre({input_name: LoadImage(image_only=True)(str(image_path))})
        first = inputs.pop(input_name)
        outputs = inferer(inputs=first[None], network=model)
        inputs[input_name] = first
        result = post({output_name: ensure_tuple(outputs)[0], **inputs})
    pred = result[output_name]
    assert pred.shape[0] == 1, "the operator squeezes a leading channel: the output must be a label map"
    expected = np.asarray(nib.load(infer.extra["output_dir"] / seg_name(image_path)).dataobj)
    labels = pred[0].cpu().numpy()
    assert labels.shape == expected.shape
    assert np.array_equal(labels.astype(np.uint8), expected), f"{(labels != expected).mean():.4%} of voxels differ"
    assert not any(tmp_path.iterdir()), "parsing the exported config wrote files"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_monai_label_reading_of_bundle_folder(name, tmp_path_factory, monkeypatch, tmp_path):
    """MONAI Label's reads: labels from channel_def, model.pt into network_def, pre/post from inference.json."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose, LoadImaged

    exported = exported_model(name, tmp_path_factory)
    infer = inference_run(name, tmp_path_factory).check()
    bundle = exported["bundle"]
    monkeypatch.chdir(tmp_path)

    meta = read_json(bundle / "configs" / "metadata.json")
    fmt = meta["network_data_format"]
    image_key, pred_key = next(iter(fmt["inputs"])), next(iter(fmt["outputs"]))
    channel_def = fmt["outputs"][pred_key]["channel_def"]
    labels = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    spec = get_spec(name)
    assert channel_def["0"] == "background"
    assert sorted(labels.values()) == list(range(1, spec.num_classes))
    assert len(fmt["inputs"][image_key]["spatial_shape"]) == 2  # MONAI Label reports dimension 2

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser.parse()
    assert parser.get_parsed_content("num_classes") == len(channel_def)

    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    missing, unexpected = network.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    network.eval()

    pre = list(parser.get_parsed_content("preprocessing").transforms)
    # MONAI Label wraps LoadImaged in LoadImageTensord, which calls it unchanged for a file path
    assert isinstance(pre[0], LoadImaged)
    post_transforms = parser.get_parsed_content("postprocessing").transforms
    post = Compose([t for t in post_transforms if "SaveImage" not in type(t).__name__])
    inferer = parser.get_parsed_content("inferer")

    image_path = infer.extra["inputs"][0]
    with torch.no_grad():
        data = Compose(pre)({image_key: str(image_path)})
        outputs = inferer(data[image_key][None], network)
        data[pred_key] = outputs[0]
        data = post(data)
    pred = data[pred_key]
    original = nib.load(image_path)
    # Restored(keys=pred, ref_image=image), which MONAI Label appends, has nothing left to resample
    assert tuple(pred.shape[1:]) == original.shape[:3]
    np.testing.assert_allclose(np.asarray(pred.affine), original.affine, atol=1e-4)
    expected = np.asarray(nib.load(infer.extra["output_dir"] / seg_name(image_path)).dataobj)
    assert np.array_equal(pred[0].cpu().numpy().astype(np.uint8), expected)
    assert not any(tmp_path.iterdir())
