"""The bundles' ``inference.json`` through ``python -m monai.bundle run``: outputs in input geometry, bad inputs rejected.

The inference runs use the tiny models trained once per session (:mod:`bundle_helpers`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bundle_helpers import (  # noqa: E402
    NAMES,
    TINY_CHANNELS,
    config_arg,
    config_file,
    inference_run,
    phantom_dataset,
    phantom_entries,
    real_lge_volume,
    run_bundle,
    seg_name,
    tiny_overrides,
)

from plc_monai.data.specs import get_spec  # noqa: E402


def _assert_same_geometry(image_path: Path, seg_path: Path, num_classes: int) -> np.ndarray:
    """The label volume has the input's spatial shape and affine; returns its voxels."""
    image, seg = nib.load(image_path), nib.load(seg_path)
    assert seg.ndim == 3, f"{seg_path.name}: {seg.ndim}D, expected a 3D label volume"
    assert seg.shape == image.shape[:3], f"{seg_path.name}: shape {seg.shape}, input {image.shape}"
    np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4, err_msg=f"{seg_path.name}: affine differs from input")
    assert seg.get_data_dtype() == np.uint8
    labels = np.asarray(seg.dataobj)
    assert labels.min() >= 0 and labels.max() < num_classes
    return labels


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_inference_writes_one_label_per_input(name, tmp_path_factory):
    """Folder input: ``<input name>_seg.nii.gz`` per input, in the input's shape and affine."""
    run = inference_run(name, tmp_path_factory).check()
    inputs, out = run.extra["inputs"], run.extra["output_dir"]
    real = real_lge_volume()
    phantoms = [p for p in inputs if real is None or p.name != real.name]
    assert sorted(p.name for p in out.iterdir()) == sorted(seg_name(p) for p in inputs)
    num_classes = get_spec(name).num_classes
    for image in phantoms:
        _assert_same_geometry(image, out / seg_name(image), num_classes)
    if name == "prostate":  # MSD layout: 4D [X, Y, Z, 2] T2 + ADC in, a 3D label out
        assert all(nib.load(p).ndim == 4 and nib.load(p).shape[3] == 2 for p in phantoms)


@pytest.mark.slow
def test_inference_real_volume_round_trip(tmp_path_factory):
    """A real LGE volume (400 x 400 x 15, LSP, 0.75 mm) comes back in its own shape and affine."""
    real = real_lge_volume()
    if real is None:
        pytest.skip("shared real data (../shared/data/real_small/mscmr_lge) not available")
    run = inference_run("acdc", tmp_path_factory).check()
    image = next(p for p in run.extra["inputs"] if p.name == real.name)
    assert nib.aff2axcodes(nib.load(image).affine) != ("R", "A", "S")  # the point: a non-RAS input
    labels = _assert_same_geometry(image, run.extra["output_dir"] / seg_name(image), get_spec("acdc").num_classes)
    assert labels.shape == (400, 400, 15)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _random_model(name: str, path: Path) -> Path:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file(name, "inference")))
    parser["channels"] = list(TINY_CHANNELS)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


@pytest.mark.slow
def test_inference_rejects_bad_inputs_by_name(tmp_path, tmp_path_factory):
    """2D, unreadable and wrong-channel files next to good ones: non-zero exit, each named, nothing written."""
    name = "acdc"
    folder = tmp_path / "in"
    folder.mkdir()
    good = [Path(e["image"]) for e in phantom_entries(name, phantom_dataset(name, tmp_path_factory))[:2]]
    for path in good:
        shutil.copyfile(path, folder / path.name)
    affine = nib.load(good[0]).affine
    bad = {
        "flat_2d.nii.gz": _write_nifti(folder / "flat_2d.nii.gz", np.ones((32, 32), np.int16), affine),
        "four_d_3ch.nii.gz": _write_nifti(folder / "four_d_3ch.nii.gz", np.ones((32, 32, 4, 3), np.int16), affine),
    }
    content = good[0].read_bytes()
    bad["cut_header.nii.gz"] = folder / "cut_header.nii.gz"
    bad["cut_header.nii.gz"].write_bytes(content[:200])
    # an interrupted copy: the header still reads, the voxels do not
    bad["cut_voxels.nii.gz"] = folder / "cut_voxels.nii.gz"
    bad["cut_voxels.nii.gz"].write_bytes(content[: len(content) // 2])
    not_gzip = folder / "text.nii.gz"
    not_gzip.write_text("not an image")
    bad[not_gzip.name] = not_gzip

    out = tmp_path / "out"
    overrides = {
        "bundle_root": str(tmp_path / "bundle"),
        "dataset_dir": str(folder),
        "output_dir": str(out),
        "ckpt_file": str(_random_model(name, tmp_path / "model.pt")),
        **tiny_overrides(name),
    }
    run = run_bundle(["run", "--config_file", config_arg(name, "inference")], overrides)
    assert run.returncode != 0, run.tail()
    for file_name in bad:
        assert file_name in run.output, f"{file_name} is not named in the error:\n{run.tail()}"
    assert f"{len(bad)} of {len(bad) + len(good)} input volume(s)" in run.output
    assert not out.exists() or not any(out.iterdir()), "a volume was segmented despite bad inputs"


def test_prostate_inputs_need_two_channels(tmp_path, tmp_path_factory):
    """The prostate bundle's ``inputs`` rejects a 4D file with 1 channel and names only it."""
    from monai.bundle import ConfigParser

    name = "prostate"
    folder = tmp_path / "in"
    folder.mkdir()
    good = Path(phantom_entries(name, phantom_dataset(name, tmp_path_factory))[0]["image"])
    shutil.copyfile(good, folder / good.name)
    image = nib.load(good)
    one_channel = _write_nifti(folder / "t2_only_4d.nii.gz", np.asarray(image.dataobj)[..., :1], image.affine)

    parser = ConfigParser()
    parser.read_config(str(config_file(name, "inference")))
    parser["dataset_dir"] = str(folder)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("inputs")
    messages = []
    error: BaseException | None = info.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    text = "\n".join(messages)
    assert one_channel.name in text and "expected at least 2" in text
    assert good.name not in text

    # both good: the datalist holds every file, each with its id
    shutil.copyfile(good, one_channel)
    parser = ConfigParser()
    parser.read_config(str(config_file(name, "inference")))
    parser["dataset_dir"] = str(folder)
    entries = parser.get_parsed_content("inputs")
    assert sorted(Path(e["image"]).name for e in entries) == sorted([good.name, one_channel.name])


def test_cut_file_has_readable_header_but_no_voxels(tmp_path, tmp_path_factory):
    """Guard for the bad-input test: half a ``.nii.gz`` passes a header-only check but cannot be loaded."""
    good = Path(phantom_entries("acdc", phantom_dataset("acdc", tmp_path_factory))[0]["image"])
    cut = tmp_path / "cut.nii.gz"
    content = good.read_bytes()
    cut.write_bytes(content[: len(content) // 2])
    assert nib.load(cut).shape == nib.load(good).shape
    with pytest.raises((OSError, EOFError, ValueError)):
        np.asarray(nib.load(cut).dataobj)


def test_inference_inputs_exclude_label_files(tmp_path):
    """An ACDC patient folder holds frames, ground truths and the 4D cine: only the frames are inputs."""
    import nibabel as nib
    import numpy as np

    from plc_monai.data.inference_inputs import list_inference_inputs

    for name in ("patient001_frame01", "patient001_frame01_gt", "patient001_frame12", "patient001_frame12_gt"):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 3), np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3, 2), np.float32), np.eye(4)), tmp_path / "patient001_4d.nii.gz")
    entries = list_inference_inputs(tmp_path, exclude=["*_gt.nii.gz", "*_4d.nii.gz"])
    assert [e["id"] for e in entries] == ["patient001_frame01", "patient001_frame12"]
    # without the exclusion the 4D cine is reported as a bad input, by name
    with pytest.raises(ValueError, match="patient001_4d"):
        list_inference_inputs(tmp_path)
