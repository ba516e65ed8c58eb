"""Which volumes are labeled, validation, unlabeled and test: the paper's fixed splits and seeded ones.

The paper's splits are the authors' id lists, packaged as ``plc_monai/data/splits/{acdc,prostate,mmwhs}.json``
(docs/data.md describes them and where they differ from the paper's text). A :class:`Split` holds id strings;
:func:`select` turns ids into datalist entries.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from plc_monai.reports import write_json

__all__ = [
    "Split", "PAPER_SPLIT_DATASETS", "load_paper_split", "list_paper_settings", "random_split", "random_setting_size",
    "save_split",
    "load_split", "select",
]

PAPER_SPLIT_DATASETS = ("acdc", "prostate", "mmwhs")
_GROUPS = ("labeled", "validation", "unlabeled", "test")


def _check_ids(ids: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when an id is not a string or appears more than once."""
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise ValueError(f"{what}: ids must be strings, got {bad[:5]!r}")
    dup = sorted(i for i, n in Counter(ids).items() if n > 1)
    if dup:
        raise ValueError(f"{what}: id(s) {dup} appear more than once")


@dataclass
class Split:
    """Id lists of one experiment.

    Args:
        labeled: ids of the labeled set ``X_L``.
        validation: ids used for model selection.
        unlabeled: ids of the unlabeled pool ``X_U`` (may contain labeled/validation ids, as the authors' pools).
        test: ids of the held-out test set; disjoint from the three other lists.
        seed: the seed of :func:`random_split`; ``None`` for the paper's fixed splits.
        source: where the split comes from, e.g. ``"paper:acdc/tr1/c1"``.

    Raises:
        ValueError: a non-string id, an id twice in one list, a labeled id also in validation, or a
            test id in another list.
    """

    labeled: list[str]
    validation: list[str]
    unlabeled: list[str]
    test: list[str]
    seed: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for group in _GROUPS:
            ids = getattr(self, group)
            if isinstance(ids, str) or not isinstance(ids, Sequence):
                raise ValueError(f"Split.{group} must be a list of id strings, got {type(ids).__name__}")
            _check_ids(ids, f"Split.{group}")
            setattr(self, group, list(ids))
        both = sorted(set(self.labeled) & set(self.validation))
        if both:
            raise ValueError(f"id(s) {both} are both labeled and validation")
        leaked = sorted(set(self.test) & (set(self.labeled) | set(self.validation) | set(self.unlabeled)))
        if leaked:
            raise ValueError(f"test id(s) {leaked} also appear in labeled, validation or unlabeled")

    def to_dict(self) -> dict[str, Any]:
        """The split as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Split:
        """Build a split from :meth:`to_dict`'s output.

        Raises:
            ValueError: a missing id list or an unknown key.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a split must be a JSON object, got {type(data).__name__}")
        missing = [g for g in _GROUPS if g not in data]
        unknown = sorted(set(data) - set(_GROUPS) - {"seed", "source"})
        if missing or unknown:
            raise ValueError(
                f"split keys: missing {missing}, unknown {unknown}; expected {list(_GROUPS)} and optional seed, source"
            )
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"split seed must be an integer or null, got {seed!r}")
        return cls(**{g: data[g] for g in _GROUPS}, seed=seed, source=str(data.get("source", "")))


@lru_cache(maxsize=None)
def _paper_file(dataset: str) -> str:
    """Text of the packaged split file of ``dataset`` (cached; callers parse a fresh copy)."""
    name = str(dataset).lower()
    if name not in PAPER_SPLIT_DATASETS:
        raise ValueError(f"no paper split for dataset {dataset!r}; expected one of {list(PAPER_SPLIT_DATASETS)}")
    return resources.files("plc_monai.data").joinpath("splits", f"{name}.json").read_text()


def list_paper_settings(dataset: str) -> dict[str, list[str]]:
    """Labeled-set settings of the paper for ``dataset`` (``acdc``, ``prostate``, ``mmwhs``) and their combinations.

    Returns:
        ``{setting: [combo, ...]}``, e.g. ``{"tr1": ["c1", ..., "c5"], "tr2": [...], "tr8": [...]}``.

    Raises:
        ValueError: unknown dataset.
    """
    settings = json.loads(_paper_file(dataset))["settings"]
    return {setting: list(combos) for setting, combos in settings.items()}


def load_paper_split(dataset: str, setting: str = "tr1", combo: str = "c1", exclude_overlap: bool = False) -> Split:
    """One of the paper's fixed splits: the authors' id lists, whose unlabeled pools overlap the labeled sets.

    Args:
        dataset: ``acdc``, ``prostate`` or ``mmwhs``.
        setting: labeled-set size, ``tr1``, ``tr2`` or ``tr8``.
        combo: which combination of labeled/validation ids, ``c1``..``c5`` (:func:`list_paper_settings`).
        exclude_overlap: remove the labeled and validation ids from the unlabeled pool.

    Returns:
        The split, with ``seed=None`` and ``source="paper:<dataset>/<setting>/<combo>"``.

    Raises:
        ValueError: unknown dataset, setting or combo (the message lists the available ones).
    """
    data = json.loads(_paper_file(dataset))
    settings = data["settings"]
    if setting not in settings:
        raise ValueError(f"unknown setting {setting!r} for {data['dataset']}; available: {list(settings)}")
    if combo not in settings[setting]:
        raise ValueError(
            f"unknown combo {combo!r} for {data['dataset']} {setting}; available: {list(settings[setting])}"
        )
    chosen = settings[setting][combo]
    unlabeled = list(data["unlabeled"])
    if exclude_overlap:
        used = set(chosen["labeled"]) | set(chosen["validation"])
        unlabeled = [i for i in unlabeled if i not in used]
    source = f"paper:{data['dataset']}/{setting}/{combo}"
    return Split(chosen["labeled"], chosen["validation"], unlabeled, data["test"], seed=None, source=source)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


_RANDOM_SETTING = re.compile(r"^tr([1-9]\d*)$")


def random_setting_size(setting: Any) -> int | None:
    """``N`` of a random-split setting ``"trN"`` (``N >= 1`` labeled volumes); ``None`` for anything else."""
    match = _RANDOM_SETTING.match(setting) if isinstance(setting, str) else None
    return int(match.group(1)) if match else None


def random_split(
    ids: Sequence[str], num_labeled: int, num_validation: int = 2, num_test: int | float | None = None, seed: int = 0
) -> Split:
    """A seeded random split of ``ids`` into test, validation, labeled and unlabeled sets.

    The sorted ids are shuffled with ``random.Random(seed)`` and cut into test, validation, labeled and the
    rest (the unlabeled pool), so a larger ``num_labeled`` keeps the test and validation sets of one seed.

    Args:
        ids: distinct volume ids (strings).
        num_labeled: size of the labeled set, at least 1.
        num_validation: size of the validation set (default 2, as the paper).
        num_test: size of the test set: an integer, a fraction in ``(0, 1)`` of ``len(ids)``, or ``None``.
        seed: seed of the shuffle.

    Returns:
        The split, each list sorted, with ``seed`` and ``source="random_split(seed=...)"``.

    Raises:
        ValueError: non-string or repeated ids, a count out of range, or more volumes asked for than ids.
    """
    ids = list(ids)
    _check_ids(ids, "random_split")
    num_labeled = _count("num_labeled", num_labeled, 1)
    num_validation = _count("num_validation", num_validation, 0)
    seed = _count("seed", seed, 0)
    if num_test is None:
        n_test = 0
    elif isinstance(num_test, float):
        if not 0.0 < num_test < 1.0:
            raise ValueError(f"num_test as a fraction must be in (0, 1), got {num_test!r}")
        n_test = int(round(num_test * len(ids)))
    else:
        n_test = _count("num_test", num_test, 0)
    needed = n_test + num_validation + num_labeled
    if needed > len(ids):
        raise ValueError(
            f"{n_test} test + {num_validation} validation + {num_labeled} labeled = {needed} volumes "
            f"asked for, but only {len(ids)} ids were given"
        )
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    a, b, c = n_test, n_test + num_validation, needed
    return Split(
        labeled=sorted(order[b:c]),
        validation=sorted(order[a:b]),
        unlabeled=sorted(order[c:]),
        test=sorted(order[:a]),
        seed=seed,
        source=f"random_split(seed={seed})",
    )


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON to ``path`` atomically (missing parent folders are created); return the path."""
    return write_json(Path(path).expanduser(), split.to_dict())


def load_split(path: str | os.PathLike) -> Split:
    """Read a split written by :func:`save_split`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid JSON or not a split (the message names the file).
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"split file {os.path.abspath(source)} does not exist")
    try:
        return Split.from_dict(json.loads(source.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise ValueError(f"{os.path.abspath(source)}: not a valid split file ({err})") from err


def select(
    datalist: Sequence[Mapping[str, Any]], ids: Sequence[str], dataset_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Shallow copies of the entries of ``datalist`` whose ``id`` is in ``ids``, in the order of ``ids``.

    Args:
        datalist: entries with an ``id`` key (as from :func:`plc_monai.data.readers.read_datalist`).
        ids: the ids to pick, e.g. ``split.labeled``.
        dataset_dir: the folder the datalist was read from, for the error message; by default the
            folder common to the entries' images.

    Raises:
        ValueError: ids missing from the datalist (all named, with the dataset folder), or an id present
            twice in the datalist.
    """
    by_id = {entry["id"]: entry for entry in datalist}
    wanted = list(ids)
    missing = [i for i in wanted if i not in by_id]
    if missing:
        if dataset_dir is None:
            images = [str(e["image"]) for e in datalist if "image" in e]
            folder = os.path.commonpath(images) if images else "an empty datalist"
        else:
            folder = os.path.abspath(dataset_dir)
        raise ValueError(
            f"{len(missing)} id(s) of the split not found in the dataset read from {folder}: {missing}; "
            f"the datalist has {len(by_id)} id(s)"
            + (f" ({sorted(by_id)[:10]}{' ...' if len(by_id) > 10 else ''})" if by_id else "")
        )
    counts = Counter(entry["id"] for entry in datalist)
    clash = sorted(i for i in set(wanted) if counts[i] > 1)
    if clash:
        raise ValueError(f"id(s) {clash} appear more than once in the datalist; cannot select one")
    return [dict(by_id[i]) for i in wanted]
