"""Tests of the raw-layout readers on tiny NIfTI files written in ``tmp_path``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from plc_monai.data import validation
from plc_monai.data.readers import (
    DatasetLayoutError,
    DatasetNotFoundError,
    VolumeValidationError,
    alias_classes,
    read_acdc,
    read_datalist,
    read_folder,
    read_mmwhs,
    read_prostate,
    validate_entry,
)
from plc_monai.data.specs import ACDC, MMWHS

REAL_SMALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real_small"
SHAPE = (16, 16, 4)
AFFINE = np.diag([1.5, 1.5, 5.0, 1.0])


# ------------------------------------------------------------------------------------------------
# tiny files
# ------------------------------------------------------------------------------------------------


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def image(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


def label(values, shape=SHAPE) -> np.ndarray:
    """A label cycling through ``values`` along the first axis (so every value is present)."""
    idx = np.arange(shape[0]) % len(values)
    return np.broadcast_to(np.asarray(values, dtype=np.int16)[idx][:, None, None], shape).copy()


def truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def make_acdc(root: Path, patients=("001", "002", "003"), ed=1, es=3, info_extra=True) -> Path:
    """ACDC download layout under ``root/training``; frames ``ed`` and ``es`` plus a 4D cine file."""
    for k, p in enumerate(patients):
        folder = root / "training" / f"patient{p}"
        save(folder / f"patient{p}_frame{ed:02d}.nii.gz", image(seed=k))
        save(folder / f"patient{p}_frame{ed:02d}_gt.nii.gz", label([0, 1, 2, 3]).astype(np.uint8))
        save(folder / f"patient{p}_frame{es:02d}.nii.gz", image(seed=100 + k))
        save(folder / f"patient{p}_frame{es:02d}_gt.nii.gz", label([0, 3, 2, 1]).astype(np.uint8))
        save(folder / f"patient{p}_4d.nii.gz", image(shape=SHAPE + (5,), seed=k))
        lines = [f"ED: {ed}", f"ES: {es}", "Group: DCM"]
        if info_extra:
            lines += ["Height: 184.0", "NbFrame: 5", "Weight: 95.0"]
        (folder / "Info.cfg").write_text("\n".join(lines) + "\n")
    return root


def make_prostate(root: Path, cases=(0, 1, 10)) -> Path:
    for k, c in enumerate(cases):
        save(root / "imagesTr" / f"prostate_{c:02d}.nii.gz", image(shape=SHAPE + (2,), seed=k))
        save(root / "labelsTr" / f"prostate_{c:02d}.nii.gz", label([0, 1, 2]).astype(np.uint8))
        # macOS resource forks shipped in the MSD tarball: not NIfTI at all
        (root / "imagesTr" / f"._prostate_{c:02d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac")
        (root / "labelsTr" / f"._prostate_{c:02d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 mac")
    (root / "dataset.json").write_text(json.dumps({"name": "PROSTATE", "modality": {"0": "T2", "1": "ADC"}}))
    return root


def make_mmwhs(root: Path, cases=(1001, 1002), values=MMWHS.raw_label_values) -> Path:
    for k, c in enumerate(cases):
        save(root / f"mr_train_{c}_image.nii.gz", image(seed=k).astype(np.int16))
        save(root / f"mr_train_{c}_label.nii.gz", label(values))
    return root


def ids(entries):
    return [e["id"] for e in entries]


# ------------------------------------------------------------------------------------------------
# ACDC
# ------------------------------------------------------------------------------------------------


def test_acdc_good_layout_parent_and_training(tmp_path):
    root = make_acdc(tmp_path / "acdc", patients=("003", "001", "002"))
    from_parent = read_acdc(root)
    from_training = read_acdc(root / "training")
    assert from_parent == from_training
    assert ids(from_parent) == ["001", "002", "003"]
    first = from_parent[0]
    assert first["image"] == str((root / "training/patient001/patient001_frame01.nii.gz").resolve())
    assert first["label"].endswith("patient001_frame01_gt.nii.gz") and Path(first["label"]).is_absolute()
    assert first["dataset"] == "acdc" and first["patient"] == "001"
    assert first["frame"] == 1 and first["phase"] == "ED"
    assert first["group"] == "DCM" and first["height"] == 184.0 and first["weight"] == 95.0
    assert first["num_frames"] == 5
    assert not any("_4d" in e["image"] for e in from_parent)


def test_acdc_frame_selection(tmp_path):
    root = make_acdc(tmp_path, ed=1, es=3)
    es = read_acdc(root, frames="es")
    assert ids(es) == ["001", "002", "003"]
    assert all(e["frame"] == 3 and e["phase"] == "ES" and e["image"].endswith("_frame03.nii.gz") for e in es)
    both = read_acdc(root, frames="ed+es")
    assert ids(both) == ["001_ED", "001_ES", "002_ED", "002_ES", "003_ED", "003_ES"]
    assert [e["patient"] for e in both] == ["001", "001", "002", "002", "003", "003"]
    assert [e["frame"] for e in both[:2]] == [1, 3]
    with pytest.raises(ValueError, match="frames="):
        read_acdc(root, frames="all")


def test_acdc_info_cfg_without_optional_fields(tmp_path):
    root = make_acdc(tmp_path, patients=("001",), info_extra=False)
    (entry,) = read_acdc(root)
    assert "height" not in entry and "weight" not in entry and entry["group"] == "DCM"


def test_acdc_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError, match="expected ACDC layout: <root>/patientNNN") as err:
        read_acdc(missing)
    assert str(missing) in str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)


def test_acdc_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="is empty.*expected ACDC layout") as err:
        read_acdc(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)


def test_other_layouts_are_named(tmp_path):
    msd = make_prostate(tmp_path / "msd")
    with pytest.raises(DatasetLayoutError, match="MSD layout.*expected ACDC layout"):
        read_acdc(msd)
    acdc = make_acdc(tmp_path / "acdc", patients=("001",))
    with pytest.raises(DatasetLayoutError, match="ACDC layout.*expected MSD Task05 Prostate layout"):
        read_prostate(acdc)
    with pytest.raises(DatasetLayoutError, match="ACDC layout.*expected MM-WHS MRI layout"):
        read_mmwhs(acdc)
    mm = make_mmwhs(tmp_path / "mm")
    with pytest.raises(DatasetLayoutError, match="MM-WHS MRI layout.*expected ACDC layout"):
        read_acdc(mm)


def test_acdc_missing_info_cfg(tmp_path):
    root = make_acdc(tmp_path, patients=("001", "002"))
    cfg = root / "training/patient002/Info.cfg"
    cfg.unlink()
    with pytest.raises(DatasetLayoutError, match="Info.cfg: missing") as err:
        read_acdc(root)
    assert str(cfg) in str(err.value)


def test_acdc_unpaired_files(tmp_path):
    root = make_acdc(tmp_path, patients=("001", "002"))
    gt = root / "training/patient001/patient001_frame01_gt.nii.gz"
    img = root / "training/patient002/patient002_frame03.nii.gz"
    gt.unlink()
    img.unlink()
    with pytest.raises(DatasetLayoutError) as err:
        read_acdc(root)
    msg = str(err.value)
    assert f"{root / 'training/patient001/patient001_frame01.nii.gz'}: image without label" in msg
    assert f"{root / 'training/patient002/patient002_frame03_gt.nii.gz'}: label without image" in msg


def test_acdc_4d_frame_rejected(tmp_path):
    root = make_acdc(tmp_path, patients=("001",))
    frame = save(root / "training/patient001/patient001_frame01.nii.gz", image(shape=SHAPE + (5,)))
    with pytest.raises(VolumeValidationError, match="expected a 3D volume") as err:
        read_acdc(root)
    assert str(frame) in str(err.value)


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda d: truncate(d / "patient001_frame01.nii.gz"), "truncated or not a valid NIfTI"),
        (lambda d: (d / "patient001_frame01_gt.nii.gz").write_bytes(b"not a nifti at all"), "not a valid NIfTI"),
        (lambda d: save(d / "patient001_frame01_gt.nii.gz", label([0, 1], shape=(16, 16, 3))), "label shape"),
        (
            lambda d: save(d / "patient001_frame01_gt.nii.gz", label([0, 1]), np.diag([1.5, 1.5, 6.0, 1.0])),
            "label affine differs",
        ),
        (lambda d: save(d / "patient001_frame01_gt.nii.gz", label([0, 1, 4, 7])), r"unexpected label value\(s\) 4, 7"),
        (
            lambda d: save(d / "patient001_frame01.nii.gz", np.where(image() > 120, np.nan, image())),
            "NaN/Inf voxel",
        ),
        (lambda d: save(d / "patient001_frame01.nii.gz", np.full(SHAPE, 3.0, np.float32)), "constant image"),
    ],
    ids=["truncated", "not_nifti", "shape", "affine", "values", "nan", "constant"],
)
def test_acdc_bad_volume_names_file(tmp_path, break_it, expected):
    root = make_acdc(tmp_path, patients=("001", "002"))
    folder = root / "training/patient001"
    break_it(folder)
    with pytest.raises(VolumeValidationError, match=expected) as err:
        read_acdc(root)
    msg = str(err.value)
    assert str(folder) in msg and "patient002" not in msg
    if expected.startswith("unexpected"):
        assert "expected values in [0, 1, 2, 3]" in msg and "patient001_frame01_gt.nii.gz" in msg
    # skipping validation reads no volume
    assert ids(read_acdc(root, validate=False)) == ["001", "002"]


def test_several_bad_files_reported_together(tmp_path):
    root = make_acdc(tmp_path, patients=("001", "002", "003", "004"))
    t = root / "training"
    truncate(t / "patient001/patient001_frame01.nii.gz")
    save(t / "patient002/patient002_frame01_gt.nii.gz", label([0, 9]).astype(np.uint8))
    save(t / "patient003/patient003_frame01.nii.gz", np.zeros(SHAPE, np.float32))
    (t / "patient004/patient004_frame01_gt.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        read_acdc(root)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    for name in ("patient001_frame01.nii.gz", "patient002_frame01_gt.nii.gz", "patient003_frame01.nii.gz"):
        assert name in msg
    assert "patient004_frame01.nii.gz: image without label" in msg
    # without the layout problem the same volumes raise VolumeValidationError listing all three
    save(t / "patient004/patient004_frame01_gt.nii.gz", label([0, 1]).astype(np.uint8))
    with pytest.raises(VolumeValidationError, match="3 invalid volume"):
        read_acdc(root)


def test_validate_entry_direct(tmp_path):
    img = save(tmp_path / "a.nii.gz", image())
    lab = save(tmp_path / "a_gt.nii.gz", label([0, 1, 2, 3]))
    entry = {"image": str(img), "label": str(lab), "id": "a"}
    assert validate_entry(entry, ACDC) is None
    assert validate_entry({"image": str(img), "id": "a"}, ACDC) is None
    with pytest.raises(VolumeValidationError, match=r"case a: .*expected values in \[0, 1\]"):
        validate_entry(entry, ACDC, label_values=[0, 1])
    with pytest.raises(VolumeValidationError, match="file does not exist"):
        validate_entry({"image": str(tmp_path / "gone.nii.gz"), "id": "g"}, None)


def test_validation_reads_each_file_once(tmp_path, monkeypatch):
    """Validating a folder costs one read per file: 100 volumes, 200 files, 200 reads."""
    root = make_mmwhs(tmp_path, cases=range(1001, 1101))
    reads: list[str] = []
    load_volume = validation.load_volume

    def counting(path: str):
        reads.append(path)
        return load_volume(path)

    monkeypatch.setattr(validation, "load_volume", counting)
    entries = read_mmwhs(root)
    assert len(entries) == 100
    files = sorted(str(p.resolve()) for p in root.rglob("*.nii.gz"))
    assert len(files) == 200 and sorted(str(Path(r).resolve()) for r in reads) == files


# ------------------------------------------------------------------------------------------------
# MSD prostate
# ------------------------------------------------------------------------------------------------


def test_prostate_good_layout_and_channels(tmp_path):
    root = make_prostate(tmp_path / "Task05_Prostate")
    entries = read_prostate(root)
    assert ids(entries) == ["000", "001", "010"]
    assert all(e["channel"] == 0 and e["channel_name"] == "T2" and e["dataset"] == "prostate" for e in entries)
    assert entries[2]["image"] == str(root / "imagesTr/prostate_10.nii.gz")
    assert entries[2]["label"] == str(root / "labelsTr/prostate_10.nii.gz")
    adc = read_prostate(tmp_path, channel=1)  # parent of Task05_Prostate
    assert ids(adc) == ids(entries) and all(e["channel"] == 1 and e["channel_name"] == "ADC" for e in adc)
    with pytest.raises(ValueError, match="channel=2"):
        read_prostate(root, channel=2)


def test_prostate_rejects_3d_image_and_unpaired(tmp_path):
    root = make_prostate(tmp_path)
    flat = save(root / "imagesTr/prostate_01.nii.gz", image())
    with pytest.raises(VolumeValidationError, match="expected a 4D volume") as err:
        read_prostate(root)
    assert str(flat) in str(err.value)
    save(root / "imagesTr/prostate_01.nii.gz", image(shape=SHAPE + (2,)))
    save(root / "imagesTr/prostate_05.nii.gz", image(shape=SHAPE + (2,)))
    save(root / "labelsTr/prostate_07.nii.gz", label([0, 1]))
    with pytest.raises(DatasetLayoutError) as err:
        read_prostate(root)
    assert "prostate_05.nii.gz: image without label" in str(err.value)
    assert "prostate_07.nii.gz: label without image" in str(err.value)


def test_prostate_constant_channel_checked(tmp_path):
    root = make_prostate(tmp_path, cases=(0,))
    data = image(shape=SHAPE + (2,))
    data[..., 1] = 0.0
    save(root / "imagesTr/prostate_00.nii.gz", data)
    assert ids(read_prostate(root, channel=0)) == ["000"]
    with pytest.raises(VolumeValidationError, match="constant channel 1"):
        read_prostate(root, channel=1)


# ------------------------------------------------------------------------------------------------
# MM-WHS
# ------------------------------------------------------------------------------------------------


def test_mmwhs_good_layout_and_subfolder(tmp_path):
    make_mmwhs(tmp_path / "mr_train", cases=(1003, 1001, 1020))
    entries = read_mmwhs(tmp_path)
    assert ids(entries) == ["1001", "1003", "1020"]
    assert all(e["dataset"] == "mmwhs" and e["raw_label_aliases"] == [[421, 420]] for e in entries)
    assert entries[0]["image"] == str(tmp_path / "mr_train/mr_train_1001_image.nii.gz")
    assert read_mmwhs(tmp_path / "mr_train") == entries


def test_mmwhs_raw_values_and_421(tmp_path):
    root = make_mmwhs(tmp_path, cases=(1001, 1002))
    odd = save(root / "mr_train_1002_label.nii.gz", label((0, 205, 420, 421, 850)))
    assert ids(read_mmwhs(root)) == ["1001", "1002"]
    with pytest.raises(VolumeValidationError, match=r"unexpected label value\(s\) 421; expected values in") as err:
        read_mmwhs(root, extra_label_aliases={})
    assert str(odd) in str(err.value) and "[0, 205, 420, 500, 550, 600, 820, 850]" in str(err.value)
    assert read_mmwhs(root, extra_label_aliases={}, validate=False)[1]["raw_label_aliases"] == []
    save(root / "mr_train_1002_label.nii.gz", label((0, 205, 300)))
    with pytest.raises(VolumeValidationError, match=r"value\(s\) 300;"):
        read_mmwhs(root)
    with pytest.raises(ValueError, match="target 421"):
        read_mmwhs(root, extra_label_aliases={422: 421})
    with pytest.raises(ValueError, match="already an MM-WHS label value"):
        read_mmwhs(root, extra_label_aliases={205: 420})
    # the recorded aliases turn into a class index for preprocessing: 420 is the left atrium, class 2
    (entry,) = read_mmwhs(root, validate=False)[:1]
    assert alias_classes(MMWHS, entry["raw_label_aliases"]) == {421: MMWHS.class_names.index("LA")} == {421: 2}
    with pytest.raises(ValueError, match="430 is not a mmwhs label value"):
        alias_classes(MMWHS, {431: 430})


# ------------------------------------------------------------------------------------------------
# generic folder and dispatcher
# ------------------------------------------------------------------------------------------------


def test_read_folder_pairs_and_optional_labels(tmp_path):
    for k, name in enumerate(("subject2_DE", "subject1_DE")):
        save(tmp_path / "images" / f"{name}.nii.gz", image(seed=k).astype(np.int16))
        save(tmp_path / "labels" / f"{name}_manual.nii.gz", label([0, 1, 2, 3]).astype(np.uint16))
    entries = read_folder(tmp_path / "images", tmp_path / "labels", label_suffix="_manual", label_values=range(4))
    assert ids(entries) == ["subject1_DE", "subject2_DE"]
    assert entries[0]["label"] == str(tmp_path / "labels/subject1_DE_manual.nii.gz")
    images_only = read_folder(tmp_path / "images")
    assert ids(images_only) == ids(entries) and all("label" not in e for e in images_only)
    via_dispatch = read_datalist("folder", tmp_path, label_suffix="_manual", label_values=[0, 1, 2, 3])
    assert via_dispatch == entries
    with pytest.raises(VolumeValidationError, match=r"value\(s\) 3"):
        read_folder(tmp_path / "images", tmp_path / "labels", label_suffix="_manual", label_values=[0, 1, 2])
    save(tmp_path / "labels" / "subject3_DE_manual.nii.gz", label([0, 1]))
    with pytest.raises(DatasetLayoutError, match="subject3_DE_manual.nii.gz: label without image"):
        read_folder(tmp_path / "images", tmp_path / "labels", label_suffix="_manual")


def test_read_folder_labels_in_image_folder(tmp_path):
    save(tmp_path / "case_0.nii.gz", image())
    save(tmp_path / "case_0_lab.nii.gz", label([0, 1, 2]))
    (entry,) = read_folder(tmp_path, tmp_path, label_suffix="_lab")
    assert entry["id"] == "case_0" and entry["label"].endswith("case_0_lab.nii.gz")
    with pytest.raises(ValueError, match="label_suffix"):
        read_folder(tmp_path, tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"no image matching '\*.mha'"):
        read_folder(tmp_path, image_glob="*.mha")


def test_read_datalist_dispatch_and_errors(tmp_path):
    acdc = make_acdc(tmp_path / "acdc", patients=("001",))
    assert read_datalist("ACDC", acdc, frames="es")[0]["phase"] == "ES"
    assert ids(read_datalist("prostate", make_prostate(tmp_path / "p"), channel=1)) == ["000", "001", "010"]
    assert ids(read_datalist("mmwhs", make_mmwhs(tmp_path / "m"))) == ["1001", "1002"]
    with pytest.raises(ValueError, match="unknown dataset 'brats'"):
        read_datalist("brats", tmp_path)
    with pytest.raises(ValueError, match=r"option\(s\) \['channel'\] not accepted by the acdc reader"):
        read_datalist("acdc", acdc, channel=1)


def test_gzip_stream_corruption_detected(tmp_path):
    root = make_mmwhs(tmp_path, cases=(1001,))
    path = root / "mr_train_1001_image.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    blob = bytearray(gzip.compress(bytes(raw)))
    blob[len(blob) // 2 : len(blob) // 2 + 16] = b"\xff" * 16  # corrupt the deflate stream mid-file
    path.write_bytes(bytes(blob))
    with pytest.raises(VolumeValidationError, match="mr_train_1001_image.nii.gz: cannot read"):
        read_mmwhs(root)


# ------------------------------------------------------------------------------------------------
# real files
# ------------------------------------------------------------------------------------------------


def _real(sub: str) -> Path:
    path = REAL_SMALL / sub
    if not path.is_dir():
        pytest.skip(f"real test data not available at {path}")
    return path


def test_real_acdc_layout():
    root = _real("acdc_layout")
    entries = read_datalist("acdc", root)
    assert ids(entries) == ["001", "021"]
    assert [e["frame"] for e in entries] == [1, 1]
    assert [e["group"] for e in entries] == ["DCM", "HCM"]
    assert read_datalist("acdc", root / "training", frames="es")[0]["image"].endswith("patient001_frame12.nii.gz")


def test_real_mscmr_folder_mixed_dtypes():
    root = _real("mscmr_lge/val")
    entries = read_folder(root / "images", root / "labels", label_suffix="_manual", label_values=(0, 1, 2, 3))
    assert ids(entries) == ["subject1_DE", "subject29_DE", "subject36_DE", "subject41_DE", "subject8_DE"]
    assert all(Path(e["label"]).name == f"{e['id']}_manual.nii.gz" for e in entries)
