"""The paper's three datasets (:class:`DatasetSpec`: classes, raw label values, spacing, crop size), read by the
readers, the phantom generator and the bundle generator (``bundles/generate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset.

    Args:
        name: short id used on the command line and in configs (``acdc``, ``prostate``, ``mmwhs``).
        class_names: one name per output channel, background first.
        raw_label_values: the raw label file value of each class (same order); the k-th maps to class k.
        spacing_mm: in-plane target spacing ``r_f`` in millimetres (Section IV-B of the paper).
        crop_size: in-plane size ``d_f`` after centre crop or pad.
        modality: imaging modality written into bundle metadata.
        paper_spacing_note: where the authors' code differs from the paper for this dataset.
    """

    name: str
    class_names: tuple[str, ...]
    raw_label_values: tuple[int, ...]
    spacing_mm: float
    crop_size: tuple[int, int]
    modality: str = "MR"
    paper_spacing_note: str = ""

    @property
    def num_classes(self) -> int:
        """Number of output channels, background included."""
        return len(self.class_names)

    @property
    def label_map(self) -> dict[int, int]:
        """``{raw value: class index}``."""
        return {raw: k for k, raw in enumerate(self.raw_label_values)}


ACDC = DatasetSpec(
    name="acdc",
    class_names=("background", "RV", "Myo", "LV"),
    raw_label_values=(0, 1, 2, 3),
    spacing_mm=1.367,
    crop_size=(192, 192),
    paper_spacing_note="the authors' code uses 1.36719 mm; the paper rounds to 1.367 mm",
)

PROSTATE = DatasetSpec(
    name="prostate",
    class_names=("background", "PZ", "TZ"),
    raw_label_values=(0, 1, 2),
    spacing_mm=0.6,
    crop_size=(192, 192),
    paper_spacing_note="the paper says 0.6 mm; the authors' code uses 0.625 mm",
)

MMWHS = DatasetSpec(
    name="mmwhs",
    class_names=("background", "Myo", "LA", "LV", "RA", "RV", "AA", "PA"),
    raw_label_values=(0, 205, 420, 500, 550, 600, 820, 850),
    spacing_mm=1.5,
    crop_size=(160, 160),
    paper_spacing_note="raw values sorted ascending map to 1..7 (inferred from the authors' class order)",
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (ACDC, PROSTATE, MMWHS)}


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    try:
        return table[name.lower()]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}") from None


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` called ``name``; ``ValueError`` unless it is ``acdc``, ``prostate`` or ``mmwhs``."""
    return _lookup(DATASETS, name, "dataset")
