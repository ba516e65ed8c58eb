"""Tests for plc_monai.evaluation.

Expected values are derived by hand in the comments, from MONAI's surface definition: the surface
of a mask is the set of its voxels removed by one binary erosion with the face-connected (6-neighbour)
structuring element, and a surface distance is the Euclidean distance (in mm, coordinates scaled by
the spacing) between the centres of two such boundary voxels. The shapes used are 1 or 2 voxels thick
along axis 0, so every voxel of them is a boundary voxel (each has a neighbour outside the mask along
axis 0), and the two masks of a pair share the same footprint on axes 1 and 2, so the nearest
boundary voxel of the other mask is always straight along axis 0.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from plc_monai.evaluation import (
    ROW_FIELDS,
    VolumeMetricsWriter,
    dice_per_class,
    evaluate_volume,
    summarise,
    write_reports,
)

SPACING = (2.5, 1.0, 1.5)  # mm along array axes 0, 1, 2
NAMES2 = ("background", "A")
NAMES5 = ("background", "A", "B", "C", "D")


def _slab(shape, value, x_range, y_range=(2, 6), z_range=(2, 6), out=None):
    vol = np.zeros(shape, dtype=np.int64) if out is None else out
    vol[x_range[0] : x_range[1], y_range[0] : y_range[1], z_range[0] : z_range[1]] = value
    return vol


# ---------------------------------------------------------------------------------------------
# dice_per_class
# ---------------------------------------------------------------------------------------------


def test_dice_per_class_hand_example():
    # two 2D "volumes" of 3x3, three classes
    target = torch.tensor(
        [
            [[0, 1, 1], [0, 1, 1], [2, 2, 0]],
            [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
        ]
    )
    pred = torch.tensor(
        [
            [[0, 1, 0], [0, 1, 1], [2, 0, 0]],
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ]
    )
    # volume 0: class 0: |T|=3, |P|=5, overlap 3 -> 6/8; class 1: |T|=4, |P|=3, overlap 3 -> 6/7;
    #           class 2: |T|=2, |P|=1, overlap 1 -> 2/3
    # volume 1: class 0: |T|=8, |P|=9, overlap 8 -> 16/17; class 1: in target only -> 0.0 (present);
    #           class 2: in neither -> NaN, not present
    dice, present = dice_per_class(pred, target, num_classes=3, include_background=True, spatial_dims=2)
    assert dice.dtype == torch.float32 and dice.shape == (2, 3)
    expected = torch.tensor([[6 / 8, 6 / 7, 2 / 3], [16 / 17, 0.0, float("nan")]])
    torch.testing.assert_close(dice, expected, equal_nan=True)
    assert present.tolist() == [[True, True, True], [True, True, False]]

    dice_fg, present_fg = dice_per_class(pred, target, num_classes=3, spatial_dims=2)
    torch.testing.assert_close(dice_fg, expected[:, 1:], equal_nan=True)
    assert present_fg.tolist() == [[True, True], [True, False]]
    # callers average with nanmean: volume 1 foreground = mean(0.0) = 0.0
    torch.testing.assert_close(torch.nanmean(dice_fg, dim=1), torch.tensor([(6 / 7 + 2 / 3) / 2, 0.0]))


def test_dice_per_class_matches_monai_compute_dice():
    from monai.metrics import compute_dice

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 6, 7, 5), generator=g)
    noise = torch.randint(0, 4, target.shape, generator=g)
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target, noise)
    pred[2][pred[2] == 3] = 0  # class 3 missing from the prediction of volume 2
    dice, present = dice_per_class(pred, target, num_classes=4)
    assert bool(present.all())

    def onehot(x):
        return torch.nn.functional.one_hot(x, 4).permute(0, 4, 1, 2, 3).float()

    ref = compute_dice(onehot(pred), onehot(target), include_background=False)
    torch.testing.assert_close(dice, ref.float())
    assert dice[2, 2].item() == 0.0


def test_dice_per_class_layouts_and_errors():
    vol = torch.zeros(4, 4, 4, dtype=torch.int64)
    vol[1:3, 1:3, 1:3] = 1
    single, _ = dice_per_class(vol, vol, num_classes=2)  # [*spatial] = one volume
    assert single.shape == (1, 1) and single.item() == 1.0
    channel, _ = dice_per_class(vol[None, None].float(), vol[None, None], num_classes=2)  # [B, 1, *spatial]
    assert channel.item() == 1.0
    numpy_in, _ = dice_per_class(vol.numpy(), vol.numpy(), num_classes=2)
    assert numpy_in.item() == 1.0
    with pytest.raises(ValueError, match="same shape"):
        dice_per_class(vol, vol[:3], num_classes=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dice_per_class(vol * 2, vol, num_classes=2)
    with pytest.raises(ValueError, match="non-integer"):
        dice_per_class(vol.float() + 0.5, vol, num_classes=2)
    with pytest.raises(ValueError, match="spatial"):
        dice_per_class(vol[None, None, None], vol[None, None, None], num_classes=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dice_per_class_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (2, 16, 16, 8), generator=g)
    pred = torch.randint(0, 4, (2, 16, 16, 8), generator=g)
    d_cpu, p_cpu = dice_per_class(pred, target, 4)
    d_gpu, p_gpu = dice_per_class(pred.cuda(), target.cuda(), 4)
    assert d_gpu.device.type == "cuda"
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
    assert torch.equal(p_gpu.cpu(), p_cpu)


# ---------------------------------------------------------------------------------------------
# evaluate_volume: known geometry
# ---------------------------------------------------------------------------------------------


def test_planes_offset_along_anisotropic_axis():
    # Reference: one-voxel plane x=2 (4x4 footprint), prediction: plane x=4. Every voxel is a boundary
    # voxel; the nearest boundary voxel of the other plane is 2 voxels away along axis 0 -> 2 * 2.5 =
    # 5.0 mm for all 32 distances. HD95 = ASD = 5.0 mm; no overlap -> Dice 0 (both present: "ok").
    shape = (8, 8, 8)
    ref = _slab(shape, 1, (2, 3))
    pred = _slab(shape, 1, (4, 5))
    (row,) = evaluate_volume(pred, ref, SPACING, NAMES2)
    assert row["status"] == "ok" and row["structure"] == "A" and row["class_index"] == 1
    assert row["dice"] == 0.0
    assert row["hd95_mm"] == pytest.approx(5.0, rel=1e-6)
    assert row["asd_mm"] == pytest.approx(5.0, rel=1e-6)
    assert row["voxels_reference"] == 16 and row["voxels_prediction"] == 16


def test_overlapping_slabs_known_dice_hd95_asd():
    # Reference x in {2,3}, prediction x in {3,4}, 4x4 footprint: 32 voxels each, overlap 16 ->
    # Dice = 2*16/64 = 0.5. Both slabs are 2 thick, so all voxels are boundary voxels.
    # ref->pred: x=2 -> 2.5 mm (to x=3), x=3 -> 0; pred->ref: x=3 -> 0, x=4 -> 2.5 mm.
    # ASD (both directions pooled): 32 zeros and 32 x 2.5 mm -> 1.25 mm.
    # HD95: each direction has 16 zeros and 16 x 2.5 mm; its 95th percentile lies among the 2.5s -> 2.5 mm.
    shape = (8, 8, 8)
    ref = _slab(shape, 1, (2, 4))
    pred = _slab(shape, 1, (3, 5))
    (row,) = evaluate_volume(torch.from_numpy(pred), torch.from_numpy(ref), SPACING, NAMES2)
    assert row["dice"] == pytest.approx(0.5)
    assert row["hd95_mm"] == pytest.approx(2.5, rel=1e-6)
    assert row["asd_mm"] == pytest.approx(1.25, rel=1e-6)

    # Same voxels, doubled spacing: Dice unchanged, every distance doubled.
    (row2,) = evaluate_volume(pred, ref, [2 * s for s in SPACING], NAMES2)
    assert row2["dice"] == pytest.approx(0.5)
    assert row2["hd95_mm"] == pytest.approx(5.0, rel=1e-6)
    assert row2["asd_mm"] == pytest.approx(2.5, rel=1e-6)

    # The same shift along axis 1 (spacing 1.0 mm) instead of axis 0 (2.5 mm): spacing is applied
    # per array axis. Slabs y in {2,3} vs {3,4} with an x/z footprint of 4x4 -> HD95 1.0, ASD 0.5.
    ref_y = _slab(shape, 1, (2, 6), y_range=(2, 4))
    pred_y = _slab(shape, 1, (2, 6), y_range=(3, 5))
    (row_y,) = evaluate_volume(pred_y, ref_y, SPACING, NAMES2)
    assert row_y["hd95_mm"] == pytest.approx(1.0, rel=1e-6)
    assert row_y["asd_mm"] == pytest.approx(0.5, rel=1e-6)


def test_hd95_is_a_percentile_not_the_maximum():
    # Reference: plane x=2 with a 5x5 footprint (25 boundary voxels). Prediction: the same plane plus one
    # stray voxel at x=6 above the plane: 26 boundary voxels.
    # pred->ref: 25 zeros and one distance 4 * 2.5 = 10 mm; ref->pred: 25 zeros.
    # 95th percentile of 26 values with one nonzero: rank 0.95*25 = 23.75 < 25 -> 0 (also under the
    # lower/higher/nearest conventions). So HD95 = 0 while the maximum (HD100) would be 10 mm.
    # ASD = (10 + 0 * 50) / (26 + 25) = 10/51 mm. Dice = 2*25 / (25 + 26) = 50/51.
    shape = (8, 8, 8)
    ref = _slab(shape, 1, (2, 3), y_range=(1, 6), z_range=(1, 6))
    pred = ref.copy()
    pred[6, 3, 3] = 1
    (row,) = evaluate_volume(pred[None], ref[None], SPACING, NAMES2)  # leading channel of 1 accepted
    assert row["dice"] == pytest.approx(50 / 51)
    assert row["hd95_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["asd_mm"] == pytest.approx(10 / 51, rel=1e-6)


def test_statuses_for_missing_and_absent_structures():
    shape = (10, 8, 8)
    ref = _slab(shape, 1, (1, 3))  # A: in both (identical)
    pred = ref.copy()
    _slab(shape, 2, (5, 6), out=ref)  # B: reference only -> missing_in_prediction
    _slab(shape, 4, (8, 9), out=pred)  # D: prediction only -> missing_in_reference; C: in neither
    rows = evaluate_volume(pred, ref, SPACING, NAMES5)
    assert [r["structure"] for r in rows] == ["A", "B", "C", "D"]
    assert all(set(r) == set(ROW_FIELDS) for r in rows)
    a, b, c, d = rows
    assert a["status"] == "ok" and a["dice"] == 1.0 and a["hd95_mm"] == 0.0 and a["asd_mm"] == 0.0
    assert b["status"] == "missing_in_prediction" and b["dice"] == 0.0
    assert b["hd95_mm"] is None and b["asd_mm"] is None
    assert (b["voxels_reference"], b["voxels_prediction"]) == (16, 0)
    assert c["status"] == "absent_in_both" and np.isnan(c["dice"]) and c["hd95_mm"] is None
    assert d["status"] == "missing_in_reference" and d["dice"] == 0.0 and d["asd_mm"] is None
    assert (d["voxels_reference"], d["voxels_prediction"]) == (0, 16)

    with_bg = evaluate_volume(pred, ref, SPACING, NAMES5, include_background=True)
    assert with_bg[0]["structure"] == "background" and with_bg[0]["status"] == "ok"


def test_evaluate_volume_rejects_bad_input():
    vol = _slab((6, 6, 6), 1, (1, 3))
    with pytest.raises(ValueError, match="same shape"):
        evaluate_volume(vol, vol[:5], SPACING, NAMES2)
    with pytest.raises(ValueError, match="spacing"):
        evaluate_volume(vol, vol, (1.0, 1.0), NAMES2)  # 2 values for a 3D map -> shape mismatch
    with pytest.raises(ValueError, match="positive"):
        evaluate_volume(vol, vol, (1.0, 0.0, 1.0), NAMES2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_volume(vol * 3, vol, SPACING, NAMES2)
    # integer spacing mixed with floats is fine (MONAI alone would reject [2.5, 1, 1])
    (row,) = evaluate_volume(vol, vol, [2.5, 1, 1], NAMES2)
    assert row["dice"] == 1.0


# ---------------------------------------------------------------------------------------------
# summarise and reports
# ---------------------------------------------------------------------------------------------


def _row(name, k, status, dice, hd=None, asd=None, nr=10, npred=10):
    return {
        "structure": name,
        "class_index": k,
        "status": status,
        "dice": dice,
        "hd95_mm": hd,
        "asd_mm": asd,
        "voxels_reference": nr,
        "voxels_prediction": npred,
    }


NAMES3 = ("background", "RV", "LV")
ROWS = {
    "p1": [_row("RV", 1, "ok", 0.8, 3.0, 1.0), _row("LV", 2, "ok", 0.9, 2.0, 0.5)],
    "p2": [_row("RV", 1, "missing_in_prediction", 0.0, npred=0), _row("LV", 2, "ok", 0.7, 6.0, 2.5)],
    "p3": [_row("RV", 1, "ok", 0.6, 5.0, 1.5), _row("LV", 2, "absent_in_both", float("nan"), nr=0, npred=0)],
}


@pytest.mark.parametrize("ddof", [0, 1])
def test_summarise_against_numpy(ddof):
    s = summarise(ROWS, NAMES3, ddof=ddof)
    rv, lv = s["structures"]
    assert (rv["structure"], lv["structure"]) == ("RV", "LV")
    # RV: Dice over all 3 volumes (missing counts as 0); distances over the 2 "ok" volumes
    assert rv["dice_mean"] == pytest.approx(np.mean([0.8, 0.0, 0.6]))
    assert rv["dice_std"] == pytest.approx(np.std([0.8, 0.0, 0.6], ddof=ddof))
    assert rv["hd95_mm_mean"] == pytest.approx(np.mean([3.0, 5.0]))
    assert rv["hd95_mm_std"] == pytest.approx(np.std([3.0, 5.0], ddof=ddof))
    assert rv["asd_mm_mean"] == pytest.approx(np.mean([1.0, 1.5]))
    assert (rv["n_missing_in_prediction"], rv["n_ok"], rv["dice_n"], rv["hd95_mm_n"]) == (1, 2, 3, 2)
    # LV: absent in p3 -> excluded everywhere
    assert lv["dice_mean"] == pytest.approx(np.mean([0.9, 0.7]))
    assert lv["asd_mm_std"] == pytest.approx(np.std([0.5, 2.5], ddof=ddof))
    assert (lv["n_absent_in_both"], lv["dice_n"]) == (1, 2)
    # headline: per-volume mean foreground Dice, then mean/std over volumes
    per_volume = [np.mean([0.8, 0.9]), np.mean([0.0, 0.7]), 0.6]
    assert s["per_volume_mean_foreground_dice"]["p3"] == pytest.approx(0.6)
    assert s["mean_foreground_dice"]["mean"] == pytest.approx(np.mean(per_volume))
    assert s["mean_foreground_dice"]["std"] == pytest.approx(np.std(per_volume, ddof=ddof))
    assert s["n_volumes"] == 3 and s["std_ddof"] == ddof


def test_summarise_rejects_bad_rows():
    with pytest.raises(ValueError, match="empty"):
        summarise({}, NAMES3)
    with pytest.raises(ValueError, match="lacks fields"):
        summarise({"p1": [{"structure": "RV"}]}, NAMES3)
    with pytest.raises(ValueError, match="class_index 7"):
        summarise({"p1": [_row("X", 7, "ok", 1.0)]}, NAMES3)


def test_write_reports_files_parse_and_no_temp_files(tmp_path):
    s = summarise(ROWS, NAMES3)
    paths = write_reports(ROWS, s, tmp_path / "out", prefix="test_")
    assert sorted(os.listdir(tmp_path / "out")) == ["test_per_volume.csv", "test_summary.json", "test_summary.md"]

    with open(paths["per_volume_csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0]) == ["volume", *ROW_FIELDS]
    p2_rv = next(r for r in rows if r["volume"] == "p2" and r["structure"] == "RV")
    assert p2_rv["status"] == "missing_in_prediction" and p2_rv["hd95_mm"] == "" and float(p2_rv["dice"]) == 0.0
    p3_lv = next(r for r in rows if r["volume"] == "p3" and r["structure"] == "LV")
    assert p3_lv["dice"] == ""  # NaN written as an empty cell

    data = json.loads(paths["summary_json"].read_text())
    assert data["mean_foreground_dice"]["mean"] == pytest.approx(s["mean_foreground_dice"]["mean"])
    assert data["per_volume"]["p3"][1]["dice"] is None and data["per_volume"]["p2"][0]["hd95_mm"] is None

    md = paths["summary_md"].read_text()
    assert "| structure | Dice mean ± std | HD95 mm | ASD mm | missing |" in md
    for name in ("RV", "LV"):
        assert f"| {name} |" in md
    assert "| 1/3 |" in md  # RV missing in 1 of 3 volumes


def test_write_reports_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    s = summarise(ROWS, NAMES3)
    write_reports(ROWS, s, tmp_path)
    before = (tmp_path / "per_volume.csv").read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_reports({"p1": ROWS["p1"]}, summarise({"p1": ROWS["p1"]}, NAMES3), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["per_volume.csv", "summary.json", "summary.md"]
    assert (tmp_path / "per_volume.csv").read_text() == before


# ---------------------------------------------------------------------------------------------
# Ignite handler with a real SupervisedEvaluator
# ---------------------------------------------------------------------------------------------


class _OneHotOfInput(torch.nn.Module):
    """'Network' whose input image already is the predicted label map: returns its one-hot."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        labels = torch.as_tensor(x)[:, 0].round().long()
        return torch.nn.functional.one_hot(labels, self.num_classes).permute(0, 4, 1, 2, 3).float()


def _write_nifti(path, array, spacing):
    nib.save(nib.Nifti1Image(array.astype(np.int16), np.diag([*spacing, 1.0])), str(path))
    return str(path)


@pytest.mark.parametrize("id_key", ["id", "no_such_key"])
def test_volume_metrics_writer_with_supervised_evaluator(tmp_path, id_key):
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedEvaluator
    from monai.transforms import AsDiscreted, LoadImaged

    shape = (8, 8, 8)
    # case01: the overlapping-slab geometry of test_overlapping_slabs_known_dice_hd95_asd, written
    # with spacing 2.5 x 1 x 1.5 mm -> Dice 0.5, HD95 2.5 mm, ASD 1.25 mm (read from the file header).
    ref1, pred1 = _slab(shape, 1, (2, 4)), _slab(shape, 1, (3, 5))
    # case02: A predicted perfectly, B in the reference only.
    ref2 = _slab(shape, 1, (1, 3))
    pred2 = ref2.copy()
    _slab(shape, 2, (5, 7), out=ref2)
    items = []
    for name, ref, pred in (("case01", ref1, pred1), ("case02", ref2, pred2)):
        items.append(
            {
                "image": _write_nifti(tmp_path / f"{name}_pred.nii.gz", pred, SPACING),
                "label": _write_nifti(tmp_path / f"{name}_label.nii.gz", ref, SPACING),
                "id": name,
            }
        )
    loader = DataLoader(
        Dataset(items, transform=LoadImaged(keys=["image", "label"], ensure_channel_first=True)), batch_size=1
    )
    out_dir = tmp_path / "reports"
    writer = VolumeMetricsWriter(out_dir, ("background", "A", "B"), id_key=id_key)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=_OneHotOfInput(3),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        val_handlers=[writer],
    )
    evaluator.run()

    assert sorted(os.listdir(out_dir)) == ["per_volume.csv", "summary.json", "summary.md"]
    ids = list(writer.rows_by_volume)
    if id_key == "id":
        assert ids == ["case01", "case02"]
    else:  # falls back to the reference file name
        assert ids == [items[0]["label"], items[1]["label"]]
    a1, b1 = writer.rows_by_volume[ids[0]]
    assert a1["dice"] == pytest.approx(0.5)
    assert a1["hd95_mm"] == pytest.approx(2.5, rel=1e-6)
    assert a1["asd_mm"] == pytest.approx(1.25, rel=1e-6)
    assert b1["status"] == "absent_in_both"
    a2, b2 = writer.rows_by_volume[ids[1]]
    assert a2["dice"] == pytest.approx(1.0) and b2["status"] == "missing_in_prediction"
    # headline: case01 mean over {A} = 0.5 (B absent in both), case02 mean over {A, B} = 0.5
    head = json.loads((out_dir / "summary.json").read_text())["mean_foreground_dice"]
    assert head["mean"] == pytest.approx(0.5) and head["std"] == pytest.approx(0.0)


def test_volume_metrics_writer_requires_spacing():
    from types import SimpleNamespace

    writer = VolumeMetricsWriter("unused", NAMES2)
    vol = torch.from_numpy(_slab((6, 6, 6), 1, (1, 3)))[None]
    engine = SimpleNamespace(state=SimpleNamespace(output=[{"pred": vol, "label": vol}], batch=[{}]))
    with pytest.raises(ValueError, match="spacing"):
        writer(engine)
    writer = VolumeMetricsWriter("unused", NAMES2, spacing=SPACING)
    writer(engine)
    assert writer.rows_by_volume["volume_0001"][0]["dice"] == 1.0
    with pytest.raises(ValueError, match="write_event"):
        VolumeMetricsWriter("unused", NAMES2, write_event="ITERATION_COMPLETED")


# ---------------------------------------------------------------------------------------------
# real labels (skipped when the shared data folder is absent)
# ---------------------------------------------------------------------------------------------

REAL_SMALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real_small"


def _oracle_distances(pred_mask, ref_mask, spacing):
    """Independent implementation of the surface-distance definition (scipy only)."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial import cKDTree

    def surface_points(mask):
        edge = mask & ~binary_erosion(mask)  # face-connected erosion, outside = background
        return np.argwhere(edge) * np.asarray(spacing, dtype=np.float64)

    sp, sr = surface_points(pred_mask), surface_points(ref_mask)
    d_pr = cKDTree(sr).query(sp)[0]
    d_rp = cKDTree(sp).query(sr)[0]
    hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
    asd = np.concatenate([d_pr, d_rp]).mean()
    return hd95, asd


def test_real_acdc_labels_match_independent_oracle():
    folder = REAL_SMALL / "acdc_layout" / "training" / "patient001"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    ed = nib.load(str(folder / "patient001_frame01_gt.nii.gz"))
    es = nib.load(str(folder / "patient001_frame12_gt.nii.gz"))
    ref = np.asarray(ed.dataobj).astype(np.int64)
    pred = np.asarray(es.dataobj).astype(np.int64)  # ES labels as a "prediction" of the ED frame
    spacing = [float(z) for z in ed.header.get_zooms()[:3]]
    names = ("background", "RV", "Myo", "LV")

    rows = evaluate_volume(pred, ref, spacing, names)
    dice, _ = dice_per_class(torch.from_numpy(pred), torch.from_numpy(ref), num_classes=4)
    for k, row in enumerate(rows, start=1):
        assert row["status"] == "ok"
        assert row["dice"] == pytest.approx(dice[0, k - 1].item(), abs=1e-6)
        hd95, asd = _oracle_distances(pred == k, ref == k, spacing)
        assert row["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
        assert row["asd_mm"] == pytest.approx(asd, rel=1e-5)
        assert 0.0 < row["dice"] < 1.0 and row["hd95_mm"] > 0.0

    # a perfect prediction, and the same with the LV removed
    perfect = evaluate_volume(ref, ref, spacing, names)
    assert all(r["dice"] == 1.0 and r["hd95_mm"] == 0.0 and r["asd_mm"] == 0.0 for r in perfect)
    no_lv = np.where(ref == 3, 0, ref)
    lv = evaluate_volume(no_lv, ref, spacing, names)[2]
    assert lv["status"] == "missing_in_prediction" and lv["dice"] == 0.0 and lv["hd95_mm"] is None
