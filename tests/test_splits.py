"""Tests of the paper's split files and of seeded splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plc_monai.data.splits import (
    PAPER_SPLIT_DATASETS,
    Split,
    list_paper_settings,
    load_paper_split,
    load_split,
    random_split,
    save_split,
    select,
)

REAL_SMALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real_small"

# sizes of the authors' lists (authors_implementation_facts.md section 6; paper Section IV-C except the
# prostate pool, which holds 17 ids where the paper says 22)
POOL_SIZES = {"acdc": (20, 52), "prostate": (15, 17), "mmwhs": (10, 10)}
ALL_SPLITS = [
    (dataset, setting, combo)
    for dataset in PAPER_SPLIT_DATASETS
    for setting, combos in list_paper_settings(dataset).items()
    for combo in combos
]


def test_settings_listed():
    full = {"tr1": ["c1", "c2", "c3", "c4", "c5"], "tr2": ["c1", "c2", "c3", "c4", "c5"], "tr8": ["c1", "c2", "c3"]}
    assert list_paper_settings("acdc") == full
    assert list_paper_settings("prostate") == full
    assert list_paper_settings("mmwhs") == {**full, "tr2": ["c1", "c2", "c3", "c4"]}
    assert len(ALL_SPLITS) == 13 + 13 + 12


@pytest.mark.parametrize("dataset, setting, combo", ALL_SPLITS)
def test_every_paper_split(dataset, setting, combo):
    split = load_paper_split(dataset, setting, combo)
    n_test, n_pool = POOL_SIZES[dataset]
    assert len(split.test) == n_test and len(split.unlabeled) == n_pool
    assert len(split.labeled) == int(setting[2:])
    assert len(split.validation) == 2
    assert not set(split.test) & (set(split.labeled) | set(split.validation) | set(split.unlabeled))
    assert not set(split.labeled) & set(split.validation)
    assert split.seed is None and split.source == f"paper:{dataset}/{setting}/{combo}"
    width = 4 if dataset == "mmwhs" else 3
    assert all(len(i) == width and i.isdigit() for i in split.labeled + split.validation + split.unlabeled + split.test)
    trimmed = load_paper_split(dataset, setting, combo, exclude_overlap=True)
    used = set(split.labeled) | set(split.validation)
    assert trimmed.unlabeled == [i for i in split.unlabeled if i not in used]
    assert (trimmed.labeled, trimmed.validation, trimmed.test) == (split.labeled, split.validation, split.test)


def test_id_ranges_and_known_entries():
    acdc = load_paper_split("acdc", "tr1", "c1")
    assert acdc.labeled == ["002"] and acdc.validation == ["011", "071"]
    assert acdc.test[:4] == ["007", "008", "009", "010"] and acdc.test[-1] == "090"
    assert "072" in acdc.unlabeled and "094" not in acdc.unlabeled and "095" not in acdc.unlabeled
    assert all(1 <= int(i) <= 100 for i in acdc.unlabeled + acdc.test)
    assert load_paper_split("acdc", "tr8", "c2").labeled == ["002", "022", "042", "062", "095", "063", "094", "043"]
    prostate = load_paper_split("prostate", "tr2", "c2")
    assert prostate.labeled == ["021", "024"] and prostate.validation == ["017", "020"]
    assert all(0 <= int(i) <= 47 for i in prostate.unlabeled + prostate.test)
    mmwhs = load_paper_split("mmwhs", "tr2", "c4")
    assert mmwhs.labeled == ["1010", "1007"] and mmwhs.validation == ["1004", "1008"]
    assert mmwhs.test == [str(i) for i in range(1011, 1021)] and mmwhs.unlabeled == [str(i) for i in range(1001, 1011)]


def test_acdc_pool_overlap_matches_the_authors_notes():
    labeled = {i for c in ("c1", "c2", "c3") for i in load_paper_split("acdc", "tr8", c).labeled}
    pool = set(load_paper_split("acdc").unlabeled)
    assert labeled - pool == {"094", "095"}
    settings = list_paper_settings("acdc")
    validation = {i for s, cs in settings.items() for c in cs for i in load_paper_split("acdc", s, c).validation}
    assert validation == {"011", "031", "071", "072"} and validation & pool == {"072"}


def test_prostate_pool_contains_every_labeled_and_validation_id():
    for setting, combos in list_paper_settings("prostate").items():
        for combo in combos:
            split = load_paper_split("prostate", setting, combo)
            assert set(split.labeled) | set(split.validation) <= set(split.unlabeled)


def test_paper_split_errors():
    with pytest.raises(ValueError, match=r"unknown combo 'c5' for mmwhs tr2; available: \['c1', 'c2', 'c3', 'c4'\]"):
        load_paper_split("mmwhs", "tr2", "c5")
    with pytest.raises(ValueError, match=r"unknown setting 'tr4'.*\['tr1', 'tr2', 'tr8'\]"):
        load_paper_split("acdc", "tr4", "c1")
    with pytest.raises(ValueError, match="no paper split for dataset 'brats'"):
        load_paper_split("brats")
    with pytest.raises(ValueError, match="no paper split"):
        list_paper_settings("mscmr")


def test_split_files_are_plain_json():
    folder = Path(__file__).resolve().parents[1] / "plc_monai" / "data" / "splits"
    for dataset in PAPER_SPLIT_DATASETS:
        data = json.loads((folder / f"{dataset}.json").read_text())
        assert data["dataset"] == dataset and data["notes"]
        assert set(data) >= {"dataset", "test", "unlabeled", "settings", "notes"}


# ------------------------------------------------------------------------------------------------
# random splits
# ------------------------------------------------------------------------------------------------

IDS = [f"{i:03d}" for i in range(1, 31)]


def test_random_split_deterministic_and_disjoint():
    a = random_split(IDS, num_labeled=3, num_validation=2, num_test=10, seed=7)
    b = random_split(list(reversed(IDS)), num_labeled=3, num_validation=2, num_test=10, seed=7)
    assert a == b
    assert (len(a.labeled), len(a.validation), len(a.test), len(a.unlabeled)) == (3, 2, 10, 15)
    groups = [a.labeled, a.validation, a.test, a.unlabeled]
    assert sorted(sum(groups, [])) == IDS
    assert a.seed == 7 and a.source == "random_split(seed=7)"
    assert any(random_split(IDS, 3, 2, 10, seed=s) != a for s in range(1, 4))


def test_random_split_nested_labeled_sets_and_fraction():
    small = random_split(IDS, 1, num_test=0.2, seed=3)
    large = random_split(IDS, 8, num_test=0.2, seed=3)
    assert len(small.test) == 6 and small.test == large.test and small.validation == large.validation
    assert set(small.labeled) < set(large.labeled)
    assert random_split(IDS, 1, seed=0).test == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_labeled": 0}, "num_labeled must be an integer >= 1"),
        ({"num_labeled": 2, "num_validation": -1}, "num_validation"),
        ({"num_labeled": 20, "num_test": 10}, "32 volumes asked for, but only 30"),
        ({"num_labeled": 2, "num_test": 1.5}, "fraction must be in"),
        ({"num_labeled": 2, "seed": -1}, "seed"),
    ],
)
def test_random_split_rejects_bad_counts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        random_split(IDS, **kwargs)


def test_random_split_rejects_bad_ids():
    with pytest.raises(ValueError, match=r"\['002'\] appear more than once"):
        random_split(IDS + ["002"], 1)
    with pytest.raises(ValueError, match="ids must be strings"):
        random_split([1, 2, 3, 4], 1)


def test_split_consistency_checks():
    with pytest.raises(ValueError, match=r"test id\(s\) \['a'\]"):
        Split(labeled=["a"], validation=["b"], unlabeled=[], test=["a"])
    with pytest.raises(ValueError, match="both labeled and validation"):
        Split(labeled=["a"], validation=["a"], unlabeled=[], test=[])
    with pytest.raises(ValueError, match="more than once"):
        Split(labeled=["a", "a"], validation=[], unlabeled=[], test=[])


# ------------------------------------------------------------------------------------------------
# files and selection
# ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    for split in (load_paper_split("acdc", "tr2", "c3"), random_split(IDS, 2, num_test=5, seed=11)):
        path = save_split(split, tmp_path / "runs" / f"{split.source.replace('/', '_')}.json")
        assert load_split(path) == split
        assert Split.from_dict(json.loads(path.read_text())) == split
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "paper:acdc_tr2_c3.json",
        "random_split(seed=11).json",
    ]


def test_load_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_split(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a valid split file"):
        load_split(bad)
    bad.write_text(json.dumps({"labeled": ["1"], "validation": [], "test": []}))
    with pytest.raises(ValueError, match=r"bad.json.*missing \['unlabeled'\]"):
        load_split(bad)


def _datalist(ids):
    return [{"image": f"/data/set/{i}.nii.gz", "label": f"/data/set/{i}_gt.nii.gz", "id": i} for i in ids]


def test_select_order_and_errors():
    datalist = _datalist(["001", "002", "003", "004"])
    chosen = select(datalist, ["003", "001"])
    assert [e["id"] for e in chosen] == ["003", "001"]
    chosen[0]["extra"] = 1
    assert "extra" not in datalist[2]
    with pytest.raises(ValueError, match=r"not found in the dataset read from /data/set: \['009', '010'\]"):
        select(datalist, ["001", "009", "010"])
    with pytest.raises(ValueError, match="read from /somewhere/else"):
        select(datalist, ["009"], dataset_dir="/somewhere/else")
    with pytest.raises(ValueError, match="more than once"):
        select(datalist + _datalist(["001"]), ["001"])


def test_select_real_acdc_with_paper_ids():
    root = REAL_SMALL / "acdc_layout"
    if not root.is_dir():
        pytest.skip(f"real test data not available at {root}")
    from plc_monai.data.readers import read_datalist

    datalist = read_datalist("acdc", root, validate=False)
    split = load_paper_split("acdc", "tr1", "c1")
    in_pool = [i for i in split.unlabeled if i in {"001", "021"}]
    assert in_pool == ["001", "021"]
    assert [e["id"] for e in select(datalist, ["021", "001"])] == ["021", "001"]
    with pytest.raises(ValueError, match=r"\['002'\]"):
        select(datalist, split.labeled)
