"""What the paper's three datasets are: classes, raw label values, target spacing and crop size.

One :class:`DatasetSpec` per dataset. Readers, preprocessing, bundles' metadata and the phantom
generator all read these, so a number such as ACDC's 1.367 mm lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset.

    Args:
        name: short id used on the command line and in configs (``acdc``, ``prostate``, ``mmwhs``).
        class_names: one name per output channel, background first.
        raw_label_values: label value in the raw files for each class of ``class_names`` (same
            order). Readers map ``raw_label_values[k] -> k``.
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
    extra: dict = field(default_factory=dict)

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


def get_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` called ``name``.

    Raises:
        ValueError: when ``name`` is not one of ``acdc``, ``prostate``, ``mmwhs``.
    """
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}") from None
