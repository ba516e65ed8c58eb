"""Tests of the SYNTHETIC phantom datasets: raw layouts, labels, geometry, determinism, realism.

The files are parsed directly with nibabel and the standard library (not with plc_monai's readers),
so these tests check the layouts against the datasets' documented formats on their own.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

from plc_monai.cli import phantom
from plc_monai.data.phantom import MARKER_NAME, acdc, phantom_files, write_phantom_dataset

ACDC_INFO_KEYS = {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
ACDC_GROUPS = {"DCM", "HCM", "MINF", "NOR", "RV"}
MMWHS_VALUES = {0, 205, 420, 500, 550, 600, 820, 850}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, tuple(float(z) for z in img.header.get_zooms())


def _info(path: Path) -> dict[str, str]:
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, sep, value = line.partition(":")
            assert sep, f"{path}: line without ':' {line!r}"
            entries[key.strip()] = value.strip()
    return entries


def _acdc_cases(root: Path) -> list[dict]:
    """Parse every patient folder: Info.cfg and the ED/ES image and label arrays."""
    cases = []
    for folder in sorted((root / "training").iterdir()):
        info = _info(folder / "Info.cfg")
        case = {"id": folder.name, "info": info, "frames": {}}
        for frame in (int(info["ED"]), int(info["ES"])):
            stem = folder / f"{folder.name}_frame{frame:02d}"
            image, image_affine, zooms = _load(Path(f"{stem}.nii.gz"))
            label, label_affine, label_zooms = _load(Path(f"{stem}_gt.nii.gz"))
            case["frames"][frame] = (image, label, image_affine, label_affine, zooms, label_zooms)
        cases.append(case)
    return cases


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Best balanced accuracy of one threshold on intensity separating samples ``a`` from ``b``."""
    values = np.concatenate([a, b]).astype(np.float64)
    is_a = np.concatenate([np.ones(a.size, bool), np.zeros(b.size, bool)])
    order = np.argsort(values, kind="stable")
    is_a = is_a[order]
    # rule "a if value <= t" for t at each sorted position, and the reverse rule
    tpr = np.cumsum(is_a) / a.size
    tnr = 1.0 - np.cumsum(~is_a) / b.size
    balanced = 0.5 * (tpr + tnr)
    return float(max(balanced.max(), (1.0 - balanced).max()))


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("acdc")
    return write_phantom_dataset("acdc", out, num_subjects=3, seed=0, image_size=(96, 96), num_slices=8)


@pytest.fixture(scope="module")
def prostate_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prostate")
    return write_phantom_dataset("prostate", out, num_subjects=3, seed=0, image_size=(64, 64), num_slices=10)


@pytest.fixture(scope="module")
def mmwhs_root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mmwhs")
    return write_phantom_dataset("mmwhs", out, num_subjects=3, seed=0, image_size=(64, 64), num_slices=24)


# ------------------------------------------------------------------------------------------ layouts


def test_acdc_layout_and_info(acdc_root):
    cases = _acdc_cases(acdc_root)
    expected = {MARKER_NAME}
    for i, case in enumerate(cases, start=1):
        pid = f"patient{i:03d}"
        assert case["id"] == pid
        info = case["info"]
        assert set(info) == ACDC_INFO_KEYS
        assert info["ED"] == "1"
        es, nb_frame = int(info["ES"]), int(info["NbFrame"])
        assert 8 <= es <= 14 and es <= nb_frame
        assert info["Group"] in ACDC_GROUPS
        assert 100.0 < float(info["Height"]) < 220.0 and 30.0 < float(info["Weight"]) < 200.0
        for frame in (1, es):
            stem = f"training/{pid}/{pid}_frame{frame:02d}"
            expected |= {f"{stem}.nii.gz", f"{stem}_gt.nii.gz"}
        expected.add(f"training/{pid}/Info.cfg")
    assert _files(acdc_root) == expected
    assert sorted(expected - {MARKER_NAME}) == phantom_files("acdc", 3, seed=0)


def test_acdc_volumes(acdc_root):
    seen = set()
    for case in _acdc_cases(acdc_root):
        for image, label, image_affine, label_affine, zooms, label_zooms in case["frames"].values():
            assert image.ndim == 3 and image.shape == label.shape == (96, 96, 8)
            assert image.dtype in (np.int16, np.float32) and label.dtype == np.uint8
            np.testing.assert_allclose(image_affine, label_affine, atol=1e-5)
            np.testing.assert_allclose(zooms, label_zooms)
            assert abs(np.linalg.det(image_affine[:3, :3])) > 1e-3
            values = set(np.unique(label).tolist())
            assert values == {0, 1, 2, 3}, f"{case['id']}: labels {values}"
            seen |= values
    assert seen == {0, 1, 2, 3}


def test_prostate_layout_and_volumes(prostate_root):
    names = [f"prostate_{i:02d}.nii.gz" for i in range(3)]
    expected = {MARKER_NAME, "dataset.json"} | {f"imagesTr/{n}" for n in names} | {f"labelsTr/{n}" for n in names}
    assert _files(prostate_root) == expected
    meta = json.loads((prostate_root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    assert meta["numTraining"] == 3 and "SYNTHETIC" in meta["description"]
    assert meta["training"] == [{"image": f"./imagesTr/{n}", "label": f"./labelsTr/{n}"} for n in names]
    for entry in meta["training"]:
        image, image_affine, zooms = _load(prostate_root / entry["image"])
        label, label_affine, _ = _load(prostate_root / entry["label"])
        assert image.ndim == 4 and image.shape == (64, 64, 10, 2) and label.shape == (64, 64, 10)
        np.testing.assert_allclose(image_affine, label_affine, atol=1e-5)
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        t2, adc = image[..., 0].astype(float), image[..., 1].astype(float)
        # different contrasts, not a rescaled copy: fat is bright on T2 and dark on ADC
        assert abs(np.corrcoef(t2.ravel(), adc.ravel())[0, 1]) < 0.9
        assert t2[label == 1].mean() > t2[label == 2].mean()  # PZ brighter than TZ on T2
        assert adc[label == 1].mean() > adc[label == 2].mean()  # and on ADC


def test_mmwhs_layout_and_volumes(mmwhs_root):
    expected = {MARKER_NAME}
    for i in range(1, 4):
        expected |= {f"mr_train_{1000 + i}_image.nii.gz", f"mr_train_{1000 + i}_label.nii.gz"}
    assert _files(mmwhs_root) == expected
    for i in range(1, 4):
        image, image_affine, _ = _load(mmwhs_root / f"mr_train_{1000 + i}_image.nii.gz")
        label, label_affine, _ = _load(mmwhs_root / f"mr_train_{1000 + i}_label.nii.gz")
        assert image.shape == label.shape == (64, 64, 24)
        np.testing.assert_allclose(image_affine, label_affine, atol=1e-5)
        assert set(np.unique(label).tolist()) == MMWHS_VALUES
        blood = image[np.isin(label, [420, 500, 550, 600])].mean()
        assert blood > image[label == 205].mean()


def test_marker_and_synthetic_notice(acdc_root):
    text = (acdc_root / MARKER_NAME).read_text()
    assert text.startswith("SYNTHETIC PHANTOM DATA")
    assert "plc_monai" in text and "dataset: acdc" in text and "seed: 0" in text and "num_subjects: 3" in text


# ------------------------------------------------------------------------------ determinism, writing


@pytest.mark.parametrize("dataset", ["acdc", "prostate", "mmwhs"])
def test_determinism(tmp_path, dataset):
    kwargs = {"num_subjects": 2, "image_size": (48, 48), "num_slices": 6}
    first = write_phantom_dataset(dataset, tmp_path / "a", seed=3, **kwargs)
    again = write_phantom_dataset(dataset, tmp_path / "b", seed=3, **kwargs)
    other = write_phantom_dataset(dataset, tmp_path / "c", seed=4, **kwargs)
    volumes = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.nii.gz"))
    assert volumes and volumes == sorted(p.relative_to(again).as_posix() for p in again.rglob("*.nii.gz"))
    for rel in volumes:
        a, b = _load(first / rel), _load(again / rel)
        assert a[0].dtype == b[0].dtype and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert (first / rel).read_bytes() == (again / rel).read_bytes()
    differs = [
        not (other / rel).exists() or not np.array_equal(_load(first / rel)[0], _load(other / rel)[0])
        for rel in volumes
    ]
    assert all(differs)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        write_phantom_dataset("brats", tmp_path / "x")
    with pytest.raises(ValueError, match="image_size"):
        write_phantom_dataset("acdc", tmp_path / "x", image_size=(8, 8))
    with pytest.raises(ValueError, match="num_slices"):
        write_phantom_dataset("acdc", tmp_path / "x", num_slices=2)
    with pytest.raises(ValueError, match="num_subjects"):
        write_phantom_dataset("mmwhs", tmp_path / "x", num_subjects=0)
    with pytest.raises(ValueError, match="seed"):
        write_phantom_dataset("acdc", tmp_path / "x", seed=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        write_phantom_dataset("acdc", tmp_path / "file")


def test_overwrite_rules(tmp_path):
    kwargs = {"image_size": (40, 40), "num_slices": 4}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a phantom"):
        write_phantom_dataset("mmwhs", foreign, num_subjects=1, **kwargs)
    write_phantom_dataset("mmwhs", foreign, num_subjects=1, overwrite=True, **kwargs)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert (foreign / "mr_train_1001_image.nii.gz").is_file()

    out = write_phantom_dataset("acdc", tmp_path / "acdc", num_subjects=3, **kwargs)
    with pytest.raises(FileExistsError, match="'acdc'"):
        write_phantom_dataset("mmwhs", out, num_subjects=1, **kwargs)
    # a phantom of the same dataset is replaced, and files of the old one are removed
    write_phantom_dataset("acdc", out, num_subjects=1, seed=1, **kwargs)
    assert sorted(_files(out) - {MARKER_NAME}) == phantom_files("acdc", 1, seed=1)
    assert not (out / "training" / "patient002").exists()
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))


def test_cli_function_prints_folder(tmp_path, capsys):
    phantom("prostate", str(tmp_path / "p"), num_subjects=1, image_size=(40, 40), num_slices=4)
    assert capsys.readouterr().out.strip() == str(tmp_path / "p")
    assert (tmp_path / "p" / "imagesTr" / "prostate_00.nii.gz").is_file()


# ------------------------------------------------------------------------------------ anatomy


def test_acdc_anatomy_varies_along_slices(acdc_root):
    for case in _acdc_cases(acdc_root):
        for _, label, *_ in case["frames"].values():
            heart = ((label == 2) | (label == 3)).sum(axis=(0, 1))
            rv = (label == 1).sum(axis=(0, 1))
            assert heart.min() > 0
            # one end of the stack (base) is much larger than the other (apex)
            assert max(heart[0], heart[-1]) > 1.5 * min(heart[0], heart[-1])
            apex = 0 if heart[0] < heart[-1] else len(heart) - 1
            assert rv[apex] == 0 and rv.max() > 0


def test_prostate_zones_vary_along_slices(prostate_root):
    for path in sorted((prostate_root / "labelsTr").glob("*.nii.gz")):
        label = _load(path)[0]
        pz, tz = (label == 1).sum(axis=(0, 1)), (label == 2).sum(axis=(0, 1))
        assert (pz + tz)[0] == 0 or (pz + tz)[-1] == 0  # the gland ends inside the stack
        assert len(set((pz + tz).tolist())) > 3
        assert not np.allclose(pz / np.maximum(pz + tz, 1), (pz / np.maximum(pz + tz, 1)).mean())


def test_subjects_differ(acdc_root, mmwhs_root):
    cases = _acdc_cases(acdc_root)
    eds = [case["frames"][1] for case in cases]
    zooms = {tuple(np.round(ed[4], 3)) for ed in eds}
    assert len(zooms) == len(eds)
    directions = {tuple(np.round(ed[2][:3, :3] / np.linalg.norm(ed[2][:3, :3], axis=0), 3).ravel()) for ed in eds}
    assert len(directions) > 1
    lv_volumes = [float((ed[1] == 3).sum() * np.prod(ed[4])) for ed in eds]
    assert len({round(v) for v in lv_volumes}) == len(lv_volumes)
    mm_affines = [_load(p)[1] for p in sorted(mmwhs_root.glob("*_image.nii.gz"))]
    assert not all(np.allclose(a, mm_affines[0]) for a in mm_affines[1:])
    # the ES cavity is smaller than the ED one in every patient
    for case in cases:
        ed, es = case["frames"][1][1], case["frames"][int(case["info"]["ES"])][1]
        assert (es == 3).sum() < (ed == 3).sum()


def test_acdc_intensity_relates_to_labels_with_overlap(acdc_root):
    for case in _acdc_cases(acdc_root):
        image, label, *_, zooms, _ = case["frames"][1]
        image = image.astype(np.float64)
        lv, myo = image[label == 3], image[label == 2]
        assert lv.mean() > myo.mean()
        assert _best_threshold_accuracy(lv, myo) > 0.8  # learnable
        # background tissue close to the heart (in-plane, within about 15 mm), lungs and air excluded
        heart = label > 0
        reach = max(1, int(round(15.0 / zooms[0])))
        near = binary_dilation(heart, structure=np.ones((3, 3, 1), bool), iterations=reach) & ~heart
        tissue = image[near & (image > 0.5 * np.median(myo))]
        assert tissue.size > myo.size / 2
        accuracy = _best_threshold_accuracy(myo, tissue)
        assert accuracy < 0.95, f"{case['id']}: myocardium separable from background by a threshold ({accuracy:.3f})"


def _relative_trend(root: Path) -> list[float]:
    """Per volume: range of a linear fit of intensity/class median over the labelled voxels."""
    trends = []
    for case in _acdc_cases(root):
        image, label = case["frames"][1][0].astype(np.float64), case["frames"][1][1]
        coords, ratios = [], []
        for value in (1, 2, 3):
            inner = binary_erosion(label == value, structure=np.ones((3, 3, 1), bool))
            voxels = image[inner]
            coords.append(np.argwhere(inner))
            ratios.append(voxels / np.median(voxels))
        xyz = np.concatenate(coords).astype(np.float64)
        design = np.column_stack([np.ones(len(xyz)), xyz / np.array(label.shape)])
        fit, *_ = np.linalg.lstsq(design, np.concatenate(ratios), rcond=None)
        predicted = design @ fit
        trends.append(float(predicted.max() - predicted.min()))
    return trends


def test_bias_field_present(tmp_path, monkeypatch):
    kwargs = {"num_subjects": 4, "seed": 0, "image_size": (96, 96), "num_slices": 8}
    with_bias = _relative_trend(write_phantom_dataset("acdc", tmp_path / "bias", **kwargs))
    monkeypatch.setattr(acdc, "bias_field", lambda rng, shape, strength, degree: np.ones(shape))
    without = _relative_trend(write_phantom_dataset("acdc", tmp_path / "flat", **kwargs))
    assert np.median(with_bias) > 2.0 * np.median(without)
    assert np.median(with_bias) > 0.1
