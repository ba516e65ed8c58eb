"""From a dataset folder and a split choice to the four datalists a run needs (the bundles' ``data``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plc_monai.data.readers import read_datalist
from plc_monai.data import splits

__all__ = ["split_datalists"]

_PARTS = ("labeled", "validation", "unlabeled", "test")


def split_datalists(
    dataset: str,
    dataset_dir: str | os.PathLike,
    split: str = "paper",
    setting: str = "tr1",
    combo: str = "c1",
    seed: int = 0,
    num_validation: int = 2,
    test_fraction: float = 0.3,
    exclude_overlap: bool = False,
    save_to: str | os.PathLike | None = None,
    validate: bool = True,
    reader_options: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Read (and validate, before any training starts) ``dataset_dir`` and split it.

    Args:
        dataset: ``acdc``, ``prostate``, ``mmwhs`` or ``folder``.
        dataset_dir: the unpacked dataset (the layout the reader expects).
        split: ``"paper"`` (the authors' fixed ids for ``setting``/``combo``), ``"random"`` (seeded,
            ``setting`` gives the number of labeled volumes) or the path of a saved split JSON.
        setting: ``tr1``, ``tr2`` or ``tr8`` (``trN`` for random splits).
        combo: ``c1`` ... ``c5`` for paper splits.
        seed: seed of a random split.
        num_validation: validation volumes of a random split.
        test_fraction: fraction of volumes held out for testing in a random split.
        exclude_overlap: drop labeled/validation ids from the paper's unlabeled pool (the authors' pools include them).
        save_to: where to write the split used (JSON, atomically), so the run can be repeated; ``None`` to skip.
        validate: validate every volume while reading.
        reader_options: options of the dataset's reader (``frames``, ``channel``, ...).

    Returns:
        ``{"labeled": [...], "validation": [...], "unlabeled": [...], "test": [...], "split": Split.to_dict()}``.
        Unlabeled entries carry no ``label`` (it is not used even when the file exists).

    Raises:
        ValueError: unknown split choice, ids of the split missing from the folder, the readers' errors.
    """
    datalist = read_datalist(dataset, dataset_dir, validate=validate, **(reader_options or {}))
    paper = dataset.lower() in splits.PAPER_SPLIT_DATASETS
    if split == "paper":
        if not paper:
            raise ValueError(
                f"the paper's splits exist for acdc, prostate and mmwhs, not {dataset!r}; use split='random'."
            )
        chosen = splits.load_paper_split(dataset, setting, combo, exclude_overlap=exclude_overlap)
    elif split == "random":
        num_labeled = splits.random_setting_size(setting)
        if num_labeled is None:
            raise ValueError(
                f"setting {setting!r} is not of the form 'trN' (N labeled volumes), e.g. 'tr1', 'tr2', 'tr8'."
            )
        # several entries of one patient (ACDC ED + ES frames) stay on the same side of the split
        groups: dict[str, list[str]] = {}
        for e in datalist:
            groups.setdefault(str(e.get("patient", e["id"])), []).append(e["id"])
        by_patient = splits.random_split(
            list(groups), num_labeled, num_validation=num_validation,
            num_test=test_fraction if test_fraction > 0 else None, seed=seed,
        )
        chosen = splits.Split(
            **{part: [i for g in getattr(by_patient, part) for i in groups[g]] for part in _PARTS},
            seed=by_patient.seed, source=by_patient.source + " (by patient)",
        )
    elif Path(split).suffix == ".json":
        chosen = splits.load_split(split)
    else:
        raise ValueError(
            f"split must be 'paper', 'random' or the path of a split .json file, got {split!r} "
            f"(paper settings for {dataset}: {splits.list_paper_settings(dataset) if paper else 'none'})."
        )
    out: dict[str, Any] = {part: splits.select(datalist, getattr(chosen, part), dataset_dir) for part in _PARTS}
    out["unlabeled"] = [{k: v for k, v in e.items() if k != "label"} for e in out["unlabeled"]]
    out["split"] = chosen.to_dict()
    if save_to is not None:
        splits.save_split(chosen, save_to)
    return out
