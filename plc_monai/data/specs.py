"""The paper's three datasets (:class:`DatasetSpec`: classes, raw label values, spacing, crop size) and what
their MONAI bundles add (:class:`BundleSpec`: default folders, metadata text), read by the readers, the
phantom generator and :mod:`plc_monai.bundle_gen`.
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


@dataclass(frozen=True)
class BundleSpec:
    """What a dataset's MONAI bundle says beyond :class:`DatasetSpec`: default folders and metadata text.

    Args:
        dataset: the dataset the bundle trains on.
        dataset_dir: default ``dataset_dir`` of ``train.json`` (the unpacked training download).
        inference_dir: default ``dataset_dir`` of ``inference.json`` (a folder of images to segment).
        inference_exclude: file name patterns ``inference.json`` skips in that folder (labels, 4D files).
        inference_channels: channels an input volume must have (``input_channels``); ``None``: any.
        title: the metadata ``name``.
        task: the metadata ``task``.
        summary: the dataset-specific first sentences of the metadata ``description``.
        data_source: the metadata ``data_source`` (challenge and URL).
        image_description: what one input slice is (the metadata ``image_classes`` adds the preprocessing).
        class_descriptions: one description per class, for the metadata ``label_classes`` and ``pred_classes``.
        channel_names: one name per class, for the output ``channel_def``.
        references: citations of the dataset, listed between the method's and N4's.

    Raises:
        ValueError: ``class_descriptions`` or ``channel_names`` without one entry per class, a non-square
            crop (the bundles take one ``crop_size``), or no references.
    """

    dataset: DatasetSpec
    dataset_dir: str
    inference_dir: str
    inference_exclude: tuple[str, ...]
    inference_channels: int | None
    title: str
    task: str
    summary: str
    data_source: str
    image_description: str
    class_descriptions: tuple[str, ...]
    channel_names: tuple[str, ...]
    references: tuple[str, ...]

    def __post_init__(self) -> None:
        data = self.dataset
        for name in ("class_descriptions", "channel_names"):
            values = getattr(self, name)
            if len(values) != data.num_classes:
                raise ValueError(
                    f"{data.name}: {name} needs one entry per class of {list(data.class_names)}, "
                    f"got {len(values)}: {list(values)}"
                )
        if data.crop_size[0] != data.crop_size[1]:
            raise ValueError(f"{data.name}: the bundles take one square crop_size, got {data.crop_size}")
        if not self.references:
            raise ValueError(f"{data.name}: references must cite the dataset (got none)")

    @property
    def name(self) -> str:
        """The bundle's folder name, ``bundles/<name>`` (the dataset's name)."""
        return self.dataset.name


ACDC_BUNDLE = BundleSpec(
    dataset=ACDC,
    dataset_dir="/workspace/data/ACDC/training",
    inference_dir="/workspace/data/ACDC/testing",
    inference_exclude=("*_gt.nii.gz", "*_4d.nii.gz"),
    inference_channels=None,
    title="ACDC cardiac cine MRI segmentation (local contrastive loss, semi-supervised)",
    task="Semi-supervised segmentation of the right ventricle, myocardium and left ventricle in short-axis cardiac cine MRI",
    summary=(
        "Segments the right ventricle (RV), left-ventricular myocardium and left ventricle (LV) cavity in short-axis "
        "cine MR images of the ACDC dataset (trained on the end-diastolic frame of each patient, as the paper; any "
        "cine frame can be segmented)."
    ),
    data_source="Automated Cardiac Diagnosis Challenge (ACDC), MICCAI 2017: https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    image_description="single-channel short-axis cine MR slice",
    class_descriptions=("background", "right ventricle cavity", "left-ventricular myocardium", "left ventricle cavity"),
    channel_names=("background", "RV", "myocardium", "LV"),
    references=(
        "O. Bernard et al., 'Deep learning techniques for automatic MRI cardiac multi-structures segmentation and "
        "diagnosis: is the problem solved?', IEEE Transactions on Medical Imaging, vol. 37, no. 11, pp. 2514-2525, 2018",
    ),
)

PROSTATE_BUNDLE = BundleSpec(
    dataset=PROSTATE,
    dataset_dir="/workspace/data/Task05_Prostate",
    inference_dir="/workspace/data/Task05_Prostate/imagesTs",
    inference_exclude=(),
    inference_channels=2,
    title="Prostate T2 MRI zonal segmentation (local contrastive loss, semi-supervised)",
    task="Semi-supervised segmentation of the peripheral and transition zones of the prostate in T2-weighted MRI",
    summary=(
        "Segments the peripheral zone and the transition zone (central gland) of the prostate in T2-weighted MR "
        "images of the Medical Segmentation Decathlon prostate task (Task05); only the T2-weighted channel is used."
    ),
    data_source="Medical Segmentation Decathlon, Task05_Prostate: http://medicaldecathlon.com/",
    image_description="single-channel T2-weighted prostate MR slice (the T2 channel of the MSD Task05 volumes)",
    class_descriptions=("background", "peripheral zone", "transition zone"),
    channel_names=("background", "peripheral zone", "transition zone"),
    references=(
        "M. Antonelli et al., 'The Medical Segmentation Decathlon', Nature Communications, vol. 13, 4128, 2022",
        "A. L. Simpson et al., 'A large annotated medical image dataset for the development and evaluation of "
        "segmentation algorithms', arXiv:1902.09063, 2019",
    ),
)

MMWHS_BUNDLE = BundleSpec(
    dataset=MMWHS,
    dataset_dir="/workspace/data/MMWHS/mr_train",
    inference_dir="/workspace/data/MMWHS/mr_test",
    inference_exclude=("*_label.nii.gz",),
    inference_channels=None,
    title="MM-WHS cardiac MRI whole-heart segmentation (local contrastive loss, semi-supervised)",
    task="Semi-supervised segmentation of seven whole-heart substructures in cardiac MRI",
    summary=(
        "Segments seven cardiac substructures (myocardium, left atrium, left ventricle, right atrium, right "
        "ventricle, ascending aorta, pulmonary artery) in the MR volumes of the Multi-Modality Whole Heart "
        "Segmentation (MM-WHS) challenge."
    ),
    data_source=(
        "Multi-Modality Whole Heart Segmentation challenge (MM-WHS), STACOM/MICCAI 2017: "
        "https://zmiclab.github.io/zxh/0/mmwhs/"
    ),
    image_description="single-channel cardiac MR slice",
    class_descriptions=(
        "background", "left-ventricular myocardium", "left atrium", "left ventricle", "right atrium",
        "right ventricle", "ascending aorta", "pulmonary artery",
    ),
    channel_names=(
        "background", "myocardium", "left atrium", "left ventricle", "right atrium", "right ventricle",
        "ascending aorta", "pulmonary artery",
    ),
    references=(
        "X. Zhuang and J. Shen, 'Multi-scale patch and multi-modality atlases for whole heart segmentation of MRI', "
        "Medical Image Analysis, vol. 31, pp. 77-87, 2016",
        "X. Zhuang et al., 'Evaluation of algorithms for multi-modality whole heart segmentation: an open-access "
        "grand challenge', Medical Image Analysis, vol. 58, 101537, 2019",
    ),
)

BUNDLES: dict[str, BundleSpec] = {spec.name: spec for spec in (ACDC_BUNDLE, PROSTATE_BUNDLE, MMWHS_BUNDLE)}


def get_bundle_spec(name: str) -> BundleSpec:
    """The :class:`BundleSpec` of ``bundles/<name>``; ``ValueError`` unless it is acdc, prostate or mmwhs."""
    return _lookup(BUNDLES, name, "bundle")
