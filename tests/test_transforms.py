"""Tests of the deterministic preprocessing: the transforms of plc_monai.data.transforms and the chain the
bundles run (``train#preprocessing`` / ``inference.json``'s ``preprocessing``, parsed from the bundle), with
its cache (plc_monai.data.preprocessing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import Dataset, MetaTensor
from monai.transforms import Compose, Invertd, LoadImaged, ResizeWithPadOrCropd

from plc_monai.data import transforms as T
from plc_monai.data.preprocessing import AtomicPersistentDataset, hash_transforms
from plc_monai.data.slice_pool import build_slice_pool
from plc_monai.data.specs import get_spec

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
REAL = REPO / ".." / "shared" / "data" / "real_small"

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ----------------------------------------------------------------------------- helpers


def _bundle(dataset: str = "acdc", config: str = "train", n4: bool = False, **values) -> ConfigParser:
    """The bundle's config with ``n4`` and other ids (``spacing_mm``, ``crop_size`` ...) overridden."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / dataset / "configs" / f"{config}.json"))
    for key, value in {"n4": n4, **values}.items():
        parser[key] = value
    return parser


def bundle_chain(dataset: str = "acdc", config: str = "train", n4: bool = False, **values) -> Compose:
    """A fresh instance of the chain the bundle runs: ``train#preprocessing`` (image + label) or, for
    ``config="inference"``, the image-only ``preprocessing`` of ``inference.json``."""
    key = "train#preprocessing" if config == "train" else "preprocessing"
    return _bundle(dataset, config, n4, **values).get_parsed_content(key, lazy=False)


def preprocess(entries: list[dict], chain: Compose) -> list[dict]:
    """Run ``chain`` over ``entries`` without a cache."""
    ds = Dataset([dict(e) for e in entries], transform=chain)
    return [ds[i] for i in range(len(ds))]


def cached_dataset(entries: list[dict], cache_dir: Path, dataset: str = "acdc", n4: bool = False, **values):
    """The bundle's own ``train#dataset`` (an ``AtomicPersistentDataset`` of its chain) over ``entries``."""
    parser = _bundle(dataset, "train", n4, cache_dir=str(cache_dir), **values)
    parser["train#dataset#data"] = [dict(e) for e in entries]
    ds = parser.get_parsed_content("train#dataset", lazy=False)
    assert isinstance(ds, AtomicPersistentDataset)
    return ds


def position(chain: Compose, transform_type: type) -> int:
    """Index of the first transform of ``transform_type`` in ``chain``."""
    return next(i for i, t in enumerate(chain.transforms) if isinstance(t, transform_type))


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _affine(zooms, translation=(10.0, -20.0, 5.0)) -> np.ndarray:
    aff = np.diag([*zooms, 1.0])
    aff[:3, 3] = translation
    return aff


def _phantom_label(shape) -> np.ndarray:
    """Two nested disks per slice: a big structure 1 with a structure 2 inside (uint8)."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy = shape[0] / 2, shape[1] / 2
    r2 = (x - cx) ** 2 + (y - cy) ** 2
    plane = np.zeros(shape[:2], np.uint8)
    plane[r2 < (0.38 * min(shape[:2])) ** 2] = 1
    plane[((x - cx - 3) ** 2 + (y - cy) ** 2) < (0.2 * min(shape[:2])) ** 2] = 2
    return np.repeat(plane[..., None], shape[2], axis=2)


def _case(tmp_path: Path, name: str, shape=(64, 60, 5), zooms=(1.0, 1.0, 8.0), perm=None, rotate=False, seed=0):
    """Write image + label NIfTI; ``perm`` moves axes in the file, ``rotate`` rotates/flips the affine."""
    rng = np.random.default_rng(seed)
    lab = _phantom_label(shape)
    img = (40.0 * lab + rng.normal(100.0, 3.0, shape)).astype(np.float32)
    aff = _affine(zooms)
    if perm is not None:
        img, lab = img.transpose(perm), lab.transpose(perm)
        new = aff.copy()
        new[:3, :3] = aff[:3, :3][:, list(perm)]
        aff = new
    if rotate:
        rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
        aff[:3, :3] = rot @ aff[:3, :3]
    return {
        "image": _save(tmp_path / f"{name}_img.nii.gz", img, aff),
        "label": _save(tmp_path / f"{name}_lab.nii.gz", lab, aff),
        "id": name,
    }


def _dice(a: np.ndarray, b: np.ndarray, c: int) -> float:
    a, b = a == c, b == c
    return float(2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _invert_and_compare(entry: dict, dataset: str, min_dice=0.95, **values):
    """Preprocess ``entry`` with the bundle's chain, invert a one-hot 'prediction' of the label and the label
    itself, compare."""
    spec = get_spec(dataset)
    chain = bundle_chain(dataset, **values)
    out = preprocess([entry], chain)[0]
    onehot = torch.nn.functional.one_hot(out["label"][0].long(), spec.num_classes).permute(3, 0, 1, 2).float()
    out["pred"] = MetaTensor(onehot, meta=dict(out["image"].meta))  # meta carries the affine
    inv = Invertd(
        keys=["pred", "label"], transform=chain, orig_keys=["image", "label"], nearest_interp=[False, True]
    )(out)
    ref = nib.load(entry["label"])
    ref_lab = np.asarray(ref.dataobj)
    raw_to_cls = spec.label_map
    ref_cls = np.vectorize(raw_to_cls.get)(np.rint(ref_lab).astype(int)) if ref_lab.size else ref_lab
    pred = inv["pred"].argmax(0).numpy()
    back = inv["label"][0].numpy()
    assert pred.shape == ref_lab.shape and back.shape == ref_lab.shape
    np.testing.assert_allclose(inv["pred"].affine.numpy(), ref.affine, atol=1e-4)
    np.testing.assert_allclose(inv["label"].affine.numpy(), ref.affine, atol=1e-4)
    dices = {}
    for c in range(1, spec.num_classes):
        if (ref_cls == c).any():
            dices[c] = (_dice(pred, ref_cls, c), _dice(back, ref_cls, c))
            assert min(dices[c]) >= min_dice, f"{entry['label']}: class {c} Dice {dices[c]}"
    return out, dices


@pytest.fixture(scope="module")
def itk_loaded():
    """Load the ITK modules N4 needs once, so N4 timings exclude ITK's lazy import."""
    import itk

    for name in ("N4BiasFieldCorrectionImageFilter", "BinShrinkImageFilter", "OtsuThresholdImageFilter"):
        getattr(itk, name)
    return itk


# ----------------------------------------------------------------------------- small transforms


def test_slice_axis_from_spacing():
    assert T.slice_axis_from_spacing((1.0, 1.0, 8.0)) == 2
    assert T.slice_axis_from_spacing((8.0, 1.0, 1.0)) == 0
    assert T.slice_axis_from_spacing((1.0, 1.0, 1.0)) == 2  # isotropic: keep Z
    assert T.slice_axis_from_spacing((2.0, 2.0, 1.0)) == 1  # tie: the last tied axis
    assert T.slice_axis_from_spacing((1.0, 1.0 + 1e-6, 1.0)) == 2  # float noise is a tie
    with pytest.raises(ValueError, match="positive"):
        T.slice_axis_from_spacing((1.0, 0.0, 1.0))


def test_select_channel(tmp_path):
    data = np.stack([np.full((8, 7, 3), 1.0), np.full((8, 7, 3), 2.0)], axis=-1).astype(np.float32)
    path = _save(tmp_path / "multi.nii.gz", data, _affine((1, 1, 3)))
    load = Compose([LoadImaged("image", ensure_channel_first=True)])
    sel = T.SelectChanneld("image", channel=0)
    out = sel(load({"image": path}))
    assert out["image"].shape == (1, 8, 7, 3) and float(out["image"].mean()) == 1.0
    out = sel(load({"image": path, "channel": 1}))  # the datalist entry's channel wins
    assert out["image"].shape == (1, 8, 7, 3) and float(out["image"].mean()) == 2.0
    with pytest.raises(ValueError, match="multi.nii.gz.*channel 2"):
        sel(load({"image": path, "channel": 2}))


def test_map_label_values(tmp_path):
    spec = get_spec("mmwhs")
    rng = np.random.default_rng(1)
    raw = rng.choice(np.asarray(spec.raw_label_values), size=(10, 9, 4)).astype(np.float32)
    path = _save(tmp_path / "lab.nii.gz", raw, _affine((1, 1, 2)))
    load = LoadImaged("label", ensure_channel_first=True)
    out = T.MapLabelValuesd("label", raw_values=spec.raw_label_values)(load({"label": path}))
    expected = np.vectorize(spec.label_map.get)(raw.astype(int))
    np.testing.assert_array_equal(out["label"][0].numpy(), expected)
    assert isinstance(out["label"], MetaTensor) and out["label"].dtype == torch.float32
    # an alias adds a raw value; unknown values fail naming the file and the value
    raw[0, 0, 0] = 421
    _save(tmp_path / "lab.nii.gz", raw, _affine((1, 1, 2)))
    with pytest.raises(ValueError, match=r"lab.nii.gz.*421"):
        T.MapLabelValuesd("label", raw_values=spec.raw_label_values)(load({"label": path}))
    out = T.MapLabelValuesd("label", raw_values=spec.raw_label_values, aliases={421: 2})(load({"label": path}))
    assert float(out["label"][0, 0, 0, 0]) == 2.0
    # the readers' per-entry form: [[raw, target raw], ...]
    out = T.MapLabelValuesd("label", raw_values=spec.raw_label_values)(
        load({"label": path, "raw_label_aliases": [[421, 420]]})
    )
    assert float(out["label"][0, 0, 0, 0]) == 2.0
    with pytest.raises(ValueError, match=r"lab.nii.gz.*421 -> 7"):
        T.MapLabelValuesd("label", raw_values=spec.raw_label_values)(load({"label": path, "raw_label_aliases": [[421, 7]]}))
    with pytest.raises(ValueError, match="unique"):
        T.MapLabelValuesd("label", raw_values=(0, 1, 1))


def test_percentile_normalisation_matches_numpy(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.gamma(2.0, 50.0, size=(40, 30, 6)).astype(np.float32)
    path = _save(tmp_path / "img.nii.gz", img, _affine((1, 1, 5)))
    data = LoadImaged("image", ensure_channel_first=True)({"image": path})
    out = T.PercentileNormalized("image", lower=1.0, upper=99.0)(data)["image"][0].numpy()
    p1, p99 = np.percentile(img, [1, 99])
    np.testing.assert_allclose(out, (img - p1) / (p99 - p1), rtol=1e-5, atol=1e-5)
    q1, q99 = np.percentile(out, [1, 99])
    assert abs(q1) < 1e-5 and abs(q99 - 1.0) < 1e-5
    assert out.min() < 0.0 and out.max() > 1.0  # no clipping


def test_percentile_normalisation_errors_name_the_file(tmp_path):
    path = _save(tmp_path / "flat_scan.nii.gz", np.full((8, 8, 3), 7.0, np.float32), _affine((1, 1, 5)))
    data = LoadImaged("image", ensure_channel_first=True)({"image": path})
    with pytest.raises(ValueError, match="flat_scan.nii.gz.*constant"):
        T.PercentileNormalized("image")(data)
    nan_img = np.ones((8, 8, 3), np.float32)
    nan_img[0, 0, 0] = np.nan
    path = _save(tmp_path / "nan_scan.nii.gz", nan_img, _affine((1, 1, 5)))
    with pytest.raises(ValueError, match="nan_scan.nii.gz.*NaN"):
        T.PercentileNormalized("image")(LoadImaged("image", ensure_channel_first=True)({"image": path}))


# ----------------------------------------------------------------------------- N4


def _biased_phantom(shape=(128, 128, 6), seed=3):
    x, y, z = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    body = (x**2 + y**2) < 0.7
    region = (x**2 + y**2) < 0.5  # homogeneous tissue well inside the body
    truth = np.where(body, 100.0, 2.0)
    bias = np.exp(0.4 * x + 0.3 * y - 0.1 * z)
    noise = np.random.default_rng(seed).normal(0.0, 1.0, shape)
    return (truth * bias + noise).astype(np.float32), region


def test_n4_reduces_bias_and_disabled_is_identity(itk_loaded):
    img, region = _biased_phantom()
    data = {"image": MetaTensor(torch.from_numpy(img)[None], affine=torch.from_numpy(_affine((1.5, 1.5, 10.0))))}
    cv = lambda a: float(a[region].std() / a[region].mean())  # noqa: E731
    out = T.N4BiasFieldCorrectiond("image")(data)["image"]
    assert isinstance(out, MetaTensor) and out.shape == (1, *img.shape) and out.dtype == torch.float32
    torch.testing.assert_close(out.affine, data["image"].affine)
    after = out[0].numpy()
    assert cv(after) < 0.35 * cv(img), (cv(img), cv(after))
    same = T.N4BiasFieldCorrectiond("image", enabled=False)(data)["image"]
    assert same is data["image"]


def test_n4_handles_zeros_and_negative_values(itk_loaded):
    img, region = _biased_phantom(shape=(64, 64, 5))
    img[:4] = 0.0  # a zero band, as in zero-padded scans
    shifted = img - 30.0  # negative values
    out0, log_bias = T.n4_bias_field_correction(img, (1.0, 1.0, 8.0))
    assert np.all(np.isfinite(out0)) and np.all(out0[:4] == 0.0)  # zeros stay zeros
    np.testing.assert_allclose(out0, img / np.exp(log_bias), rtol=1e-5)
    out1, _ = T.n4_bias_field_correction(shifted, (1.0, 1.0, 8.0))
    assert np.all(np.isfinite(out1)) and out1.shape == img.shape
    with pytest.raises(ValueError, match="constant"):
        T.n4_bias_field_correction(np.ones((16, 16, 3), np.float32), (1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- geometry


def test_bundles_define_the_chain_once():
    """Validation and evaluation reuse ``train#preprocessing``; inference runs its image-only form."""
    for name in ("acdc", "prostate", "mmwhs"):
        train = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
        assert train["validate"]["preprocessing"] == "%train#preprocessing"
        assert train["train"]["dataset"]["transform"] == "@train#preprocessing"
        assert train["validate"]["dataset"]["transform"] == "@validate#preprocessing"
        assert train["train"]["unlabeled_dataset"]["transform"] == "@train#preprocessing"
        train_types = [type(t).__name__ for t in bundle_chain(name).transforms]
        infer_types = [type(t).__name__ for t in bundle_chain(name, "inference").transforms]
        label_only = {"MapLabelValuesd", "CopyItemsd"}
        assert infer_types == [t for t in train_types if t not in label_only], (train_types, infer_types)


@pytest.mark.parametrize("perm", [None, (2, 0, 1), (0, 2, 1)])
def test_resampling_keeps_slices_and_gives_expected_size(tmp_path, perm):
    entry = _case(tmp_path, "geo", shape=(64, 60, 5), zooms=(1.0, 1.0, 8.0), perm=perm)
    r = 1.367
    chain = bundle_chain("acdc", spacing_mm=r)
    before_crop = preprocess([entry], Compose(chain.transforms[: position(chain, ResizeWithPadOrCropd)]))[0]
    # MONAI Spacing (scale_extent=False) spans first to last voxel centre
    expected = [int(round((n - 1) * 1.0 / r)) + 1 for n in (64, 60)] + [5]
    assert list(before_crop["image"].shape[1:]) == expected
    assert list(before_crop["label"].shape[1:]) == expected
    np.testing.assert_allclose(before_crop["image"].pixdim.numpy()[:3], [r, r, 8.0], rtol=1e-5)
    for crop in (48, 128):  # crop and pad
        out = preprocess([entry], bundle_chain("acdc", spacing_mm=r, crop_size=crop))[0]
        assert out["image"].shape == (1, crop, crop, 5) and out["label"].shape == (1, crop, crop, 5)
        assert out["image"].dtype == torch.float32
        assert out["native_label"].shape == (1, *nib.load(entry["label"]).shape)  # the label before resampling


@pytest.mark.parametrize("perm,rotate", [(None, False), ((2, 0, 1), False), ((0, 2, 1), True), (None, True)])
def test_invertd_round_trip(tmp_path, perm, rotate):
    entry = _case(tmp_path, "inv", shape=(80, 72, 5), zooms=(1.0, 1.0, 8.0), perm=perm, rotate=rotate)
    out, _ = _invert_and_compare(entry, "acdc", spacing_mm=1.367, crop_size=64)
    assert out["image"].shape == (1, 64, 64, 5)


def test_unlabeled_entries_use_the_same_chain(tmp_path):
    entry = _case(tmp_path, "unl")
    out = preprocess([{"image": entry["image"], "id": "u"}, entry], bundle_chain("acdc", crop_size=32))
    assert "label" not in out[0] and out[0]["image"].shape == out[1]["image"].shape == (1, 32, 32, 5)
    only_image = bundle_chain("acdc", "inference", crop_size=32)
    inferred = preprocess([{"image": entry["image"]}], only_image)[0]
    torch.testing.assert_close(inferred["image"], out[1]["image"])
    # inference: a prediction on the preprocessed grid maps back with the image-only chain
    onehot = torch.nn.functional.one_hot(out[1]["label"][0].long(), 4).permute(3, 0, 1, 2).float()
    inferred["pred"] = MetaTensor(onehot, meta=dict(inferred["image"].meta))
    back = Invertd("pred", transform=only_image, orig_keys="image", nearest_interp=False)(inferred)["pred"]
    ref = nib.load(entry["label"])
    assert back.shape == (4, *ref.shape)
    np.testing.assert_allclose(back.affine.numpy(), ref.affine, atol=1e-4)
    for c in (1, 2):
        assert _dice(back.argmax(0).numpy(), np.asarray(ref.dataobj), c) >= 0.95


# ----------------------------------------------------------------------------- cache


def _cache_files(cache: Path) -> set[str]:
    return set(os.listdir(cache)) if cache.is_dir() else set()


def test_cache_reuses_and_invalidates(tmp_path, monkeypatch, itk_loaded):
    calls = []
    real_n4 = T.n4_bias_field_correction

    def counting_n4(*args, **kwargs):
        calls.append(kwargs.get("name"))
        return real_n4(*args, **kwargs)

    monkeypatch.setattr(T, "n4_bias_field_correction", counting_n4)
    entries = [_case(tmp_path, f"c{i}", shape=(40, 40, 4), seed=i) for i in range(2)]
    cache = tmp_path / "cache"
    first_ds = cached_dataset(entries, cache, n4=True, crop_size=32)
    first = [first_ds[i] for i in range(2)]
    assert len(calls) == 2
    files = _cache_files(cache)
    assert len(files) == 2 and all(f.endswith(".pt") for f in files)  # no temp files left
    # a new instance of the bundle's dataset with equal parameters hits the cache
    again_ds = cached_dataset(entries, cache, n4=True, crop_size=32)
    again = [again_ds[i] for i in range(2)]
    assert len(calls) == 2
    for a, b in zip(first, again):
        for key in ("image", "label", "native_label"):
            torch.testing.assert_close(a[key], b[key])
        torch.testing.assert_close(a["image"].affine, b["image"].affine)
    # cached items still invert, with the chain of the dataset that read them
    inv = Invertd("label", transform=again_ds.transform, orig_keys="label")(again[0])
    assert inv["label"].shape == (1, 40, 40, 4)
    assert len(calls) == 2
    # a changed parameter recomputes into new files
    off = cached_dataset(entries, cache, n4=False, crop_size=32)
    [off[i] for i in range(2)]
    assert len(calls) == 2 and len(_cache_files(cache)) == 4
    coarse = cached_dataset(entries, cache, n4=True, crop_size=32, spacing_mm=1.5)
    [coarse[i] for i in range(2)]
    assert len(calls) == 4 and len(_cache_files(cache)) == 6


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    entry = _case(tmp_path, "atomic", shape=(24, 24, 3))
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="disk full"):
        cached_dataset([entry], cache, crop_size=16)[0]
    assert _cache_files(cache) == set()
    monkeypatch.setattr(torch, "save", real_save)
    cached_dataset([entry], cache, crop_size=16)[0]
    assert len(_cache_files(cache)) == 1


def test_transform_hash_ignores_run_time_state(tmp_path):
    entry = _case(tmp_path, "state", shape=(24, 24, 3))
    chain = bundle_chain("acdc", crop_size=16)
    before = hash_transforms(chain.transforms)
    chain(dict(entry))  # readers remember file names, transforms create thread-locals
    assert hash_transforms(chain.transforms) == before
    assert hash_transforms(bundle_chain("acdc", crop_size=16).transforms) == before  # a fresh instance
    for changed in (
        bundle_chain("acdc", n4=True, crop_size=16),
        bundle_chain("acdc", crop_size=20),
        bundle_chain("acdc", crop_size=16, spacing_mm=1.0),
        bundle_chain("prostate", crop_size=16, spacing_mm=1.367),  # other label values
    ):
        assert hash_transforms(changed.transforms) != before


def test_transform_hash_is_stable_across_processes():
    code = (
        "import sys; from monai.bundle import ConfigParser;"
        "from plc_monai.data.preprocessing import hash_transforms;"
        "p = ConfigParser(); p.read_config(sys.argv[1]);"
        "print(hash_transforms(p.get_parsed_content('train#preprocessing').flatten().transforms).decode())"
    )
    train = str(BUNDLES / "acdc" / "configs" / "train.json")
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", code, train], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    here = hash_transforms(bundle_chain("acdc", n4=True).flatten().transforms).decode()
    assert res.stdout.strip().splitlines()[-1] == here
    other = hash_transforms(bundle_chain("acdc", n4=True, spacing_mm=1.5).flatten().transforms).decode()
    assert other != here


# ----------------------------------------------------------------------------- slice stacking


def test_build_slice_pool_shapes_and_content():
    rng = np.random.default_rng(4)
    vols = []
    for s in (3, 5):
        img = torch.from_numpy(rng.normal(size=(1, 8, 6, s)).astype(np.float32))
        lab = torch.from_numpy(rng.integers(0, 4, size=(1, 8, 6, s)).astype(np.float32))
        vols.append({"image": MetaTensor(img), "label": MetaTensor(lab)})
    pool = build_slice_pool(vols)
    assert pool.images.shape == (8, 1, 8, 6) and pool.images.dtype == torch.float32
    assert pool.labels.shape == (8, 8, 6) and pool.labels.dtype == torch.uint8
    assert not isinstance(pool.images, MetaTensor)
    slice_index = torch.stack([pool.volume_index, pool.slice_index], dim=1)
    assert slice_index.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [1, 3], [1, 4]]
    for n, (v, s) in enumerate(slice_index.tolist()):
        torch.testing.assert_close(pool.images[n], vols[v]["image"][..., s].as_tensor())
        assert torch.equal(pool.labels[n], vols[v]["label"][0, ..., s].to(torch.uint8).as_tensor())
    no_label = build_slice_pool([{"image": v["image"]} for v in vols], label_key=None)
    assert no_label.labels is None and no_label.images.shape == (8, 1, 8, 6)
    with pytest.raises(ValueError, match="no 'label'"):
        build_slice_pool([vols[0], {"image": vols[1]["image"]}])
    with pytest.raises(ValueError, match="in-plane size"):
        build_slice_pool([vols[0], {"image": MetaTensor(torch.zeros(1, 9, 6, 2))}])


# ----------------------------------------------------------------------------- real data


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.parametrize("patient", ["patient001", "patient021"])
def test_real_acdc_round_trip(patient):
    folder = _require(REAL / "acdc_layout" / "training" / patient)
    entry = {
        "image": str(folder / f"{patient}_frame01.nii.gz"),
        "label": str(folder / f"{patient}_frame01_gt.nii.gz"),
        "id": patient,
    }
    out, dices = _invert_and_compare(entry, "acdc")  # the bundle's defaults: 1.367 mm, 192 x 192
    assert out["image"].shape == (1, 192, 192, 10) and out["label"].shape == (1, 192, 192, 10)
    assert set(dices) == {1, 2, 3}


def _mscmr_entries() -> list[dict]:
    root = _require(REAL / "mscmr_lge")
    entries = []
    for img in sorted(root.glob("*/images/subject*_DE.nii.gz")):
        lab = img.parent.parent / "labels" / img.name.replace("_DE.nii.gz", "_DE_manual.nii.gz")
        entries.append({"image": str(img), "label": str(lab), "id": img.name.split("_")[0]})
    return entries


@pytest.mark.slow
def test_real_mscmr_odd_orientations_round_trip():
    entries = _mscmr_entries()
    assert len(entries) == 8
    for entry in entries:
        n_slices = nib.load(entry["image"]).shape[2]
        out, dices = _invert_and_compare(entry, "acdc")
        assert out["image"].shape == (1, 192, 192, n_slices)
        assert set(dices) == {1, 2, 3}


def test_real_prostate_single_channel():
    folder = _require(REAL / "prostate_t2")
    entry = {
        "image": str(folder / "Prostatex_0000.nii.gz"),
        "label": str(folder / "Prostatex_0000_lab.nii.gz"),
        "id": "Prostatex_0000",
        "channel": 0,
    }
    out, dices = _invert_and_compare(entry, "prostate")
    assert out["image"].shape == (1, 192, 192, 19)
    np.testing.assert_allclose(out["image"].pixdim.numpy()[:3], [0.6, 0.6, 3.0], rtol=1e-4)
    assert set(dices) == {1, 2}


def test_real_n4_on_acdc_volume(itk_loaded):
    folder = _require(REAL / "acdc_layout" / "training" / "patient001")
    entry = {"image": str(folder / "patient001_frame01.nii.gz")}
    chain = bundle_chain("acdc", "inference", n4=True)
    n4 = position(chain, T.N4BiasFieldCorrectiond)
    load = Compose(chain.transforms[:n4])(entry)  # load, channel first, channel select, slice axis last
    out = chain.transforms[n4](dict(load))["image"]
    assert out.shape == load["image"].shape and torch.isfinite(out).all()
    assert not torch.allclose(out, load["image"])


def test_prepare_fills_the_bundles_cache_once(tmp_path, capsys):
    """``python -m plc_monai prepare`` writes exactly the files the bundle's datasets read."""
    root = _require(REAL / "acdc_layout" / "training")
    from plc_monai.cli import prepare

    split = tmp_path / "split.json"
    split.write_text(json.dumps({"labeled": ["001"], "validation": ["021"], "unlabeled": [], "test": []}))
    cache = tmp_path / "cache"
    args = dict(dataset_dir=str(root), cache_dir=str(cache), n4=False, split=str(split), output_dir=str(tmp_path / "run"))
    prepare("acdc", **args)
    assert len(_cache_files(cache)) == 2
    first = capsys.readouterr().out
    assert "[1/2] 001" in first and "[2/2] 021" in first and "2 volumes cached" in first
    prepare("acdc", **args)
    assert len(_cache_files(cache)) == 2
    # the bundle's dataset over the same entry only reads the cache: no new file, same arrays
    parser = _bundle("acdc", cache_dir=str(cache), dataset_dir=str(root), split=str(split), output_dir=str(tmp_path / "run"))
    labeled = parser.get_parsed_content("train#dataset")
    assert labeled[0]["image"].shape == (1, 192, 192, 10)
    assert len(_cache_files(cache)) == 2
    with pytest.raises(RuntimeError) as info:  # MONAI's "Failed to instantiate" around the reader's error
        prepare("acdc", **{**args, "dataset_dir": str(tmp_path / "no_such_dir")})
    causes, error = [], info.value
    while error is not None:
        causes.append(str(error))
        error = error.__cause__
    assert any("no_such_dir" in c and "does not exist" in c for c in causes), causes
