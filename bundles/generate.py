"""Write the MONAI bundles (``bundles/<name>/``) from the template ``bundles/_template/``, the bundle specs below
and the dataset specs of :mod:`plc_monai.data.specs`.

``python bundles/generate.py [--check]`` in a plc_monai checkout; the template layout and placeholder syntax are
described in docs/training.md ("Changing the bundles"). This is a tool of the repository, not of the installed
package: it writes the committed bundle files next to it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text
from plc_monai.data.specs import ACDC, MMWHS, PROSTATE, DatasetSpec

__all__ = ["TEMPLATE_DIR", "DEFAULT_BUNDLES_DIR", "GENERATED_FOLDERS", "BundleDifference", "BundleSpec", "BUNDLES", "get_bundle_spec",
           "template_values", "render",
           "render_bundle", "compare_bundle", "write_bundle", "main"]

DEFAULT_BUNDLES_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = DEFAULT_BUNDLES_DIR / "_template"
GENERATED_FOLDERS = ("configs",)
"""Folders of a bundle that hold generated files only: any other file there is reported as stale."""

#: files re-indented with ``json.dumps(indent=4)`` (the model zoo's format) after rendering
_REFORMATTED = frozenset({"configs/metadata.json"})
_NAME = r"[a-z_][a-z0-9_]*"
_WHOLE = re.compile(r'"\{\{(\*?)(' + _NAME + r')\}\}"')
_INLINE = re.compile(r"\{\{(" + _NAME + r")\}\}")
_LEFTOVER = re.compile(r"\{\{|\}\}")
_SPEC_FIELDS = (
    "name", "dataset_dir", "inference_dir", "inference_exclude", "inference_channels", "title", "task", "summary",
    "data_source", "image_description", "references",
)
_DATASET_FIELDS = ("class_names", "num_classes", "spacing_mm", "modality")


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
    try:
        return BUNDLES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown bundle {name!r}; expected one of {sorted(BUNDLES)}") from None


def template_values(spec: BundleSpec) -> dict[str, Any]:
    """The placeholder values of one bundle: ``{placeholder name: value}``.

    The spec's fields in ``_SPEC_FIELDS``, its dataset's in ``_DATASET_FIELDS`` and ``label_raw_values``; ``crop_size``
    (one side of the square crop); ``class_list`` (``"0: background, 1: ..."``, a raw label value that differs from
    the class index in brackets); ``channel_def`` (``{"0": "background", ...}``); ``plc_monai_version``.
    """
    import plc_monai

    data = spec.dataset
    class_list = ", ".join(
        f"{index}: {description}" + (f" (raw {raw})" if raw != index else "")
        for index, (description, raw) in enumerate(zip(spec.class_descriptions, data.raw_label_values))
    )
    return {
        **{name: getattr(spec, name) for name in _SPEC_FIELDS},
        **{name: getattr(data, name) for name in _DATASET_FIELDS},
        "label_raw_values": data.raw_label_values,
        "crop_size": data.crop_size[0],
        "class_list": class_list,
        "channel_def": {str(i): name for i, name in enumerate(spec.channel_names)},
        "plc_monai_version": plc_monai.__version__,
    }


def _lookup(values: Mapping[str, Any], name: str, source: str) -> Any:
    if name not in values:
        raise ValueError(f"{source}: unknown placeholder {{{{{name}}}}}; known placeholders: {sorted(values)}")
    return values[name]


def render(text: str, values: Mapping[str, Any], source: str = "<template>", is_json: bool = True) -> str:
    """Fill the placeholders of one template file.

    Args:
        text: the template file's content.
        values: placeholder values (see :func:`template_values`).
        source: the file's name, for error messages.
        is_json: JSON file (whole-string and spliced placeholders, escaped inline text, the result
            must parse); ``False``: only inline placeholders, replaced by plain text.

    Raises:
        ValueError: for an unknown placeholder, a splice of something that is not a non-empty list,
            braces left over after rendering, or a result that is not valid JSON.
    """

    def whole(match: re.Match) -> str:
        splice, name = match.group(1), match.group(2)
        value = _lookup(values, name, source)
        if not splice:
            return json.dumps(value)
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{source}: {{{{*{name}}}}} splices a list into a list, but {name} = {value!r}")
        return ", ".join(json.dumps(v) for v in value)

    def inline(match: re.Match) -> str:
        value = _lookup(values, match.group(1), source)
        as_text = value if isinstance(value, str) else json.dumps(value)
        return json.dumps(as_text)[1:-1] if is_json else as_text

    out = _INLINE.sub(inline, _WHOLE.sub(whole, text) if is_json else text)
    leftover = _LEFTOVER.search(out)
    if leftover is not None:
        line = out.count("\n", 0, leftover.start()) + 1
        raise ValueError(f"{source}: unmatched '{leftover.group()}' left after rendering (line {line})")
    if is_json:
        try:
            json.loads(out)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: rendered text is not valid JSON ({err})") from err
    return out


def _files_under(folder: Path) -> list[Path]:
    """The files below ``folder``, sorted, without ``__pycache__``."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]


def render_bundle(name: str, template_dir: str | Path = TEMPLATE_DIR) -> dict[str, str]:
    """Every generated file of bundle ``name``: ``{path relative to the bundle folder: content}``.

    Raises:
        ValueError: for an unknown bundle or a template error (see :func:`render`).
        FileNotFoundError: when the template folder has no ``common/``.
    """
    spec = get_bundle_spec(name)
    values = template_values(spec)
    template_dir = Path(template_dir)
    templates = {p.relative_to(folder).as_posix(): p for folder in (template_dir / "common", template_dir / spec.name)
                 for p in _files_under(folder)}
    if not templates:
        raise FileNotFoundError(f"no template files for bundle {name!r} in {template_dir} (expected common/ there)")
    out = {}
    for relative, path in templates.items():
        text = render(path.read_text(encoding="utf-8"), values, source=str(path), is_json=path.suffix == ".json")
        if relative in _REFORMATTED:
            text = json.dumps(json.loads(text), indent=4) + "\n"
        out[relative] = text
    return out


@dataclass(frozen=True)
class BundleDifference:
    """A bundle file that is not what the template gives.

    ``kind``: ``"changed"``, ``"missing"`` or ``"stale"`` (in ``configs/`` but not produced by the template).
    """

    path: Path
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}"


def compare_bundle(
    name: str, bundles_dir: str | Path = DEFAULT_BUNDLES_DIR, template_dir: str | Path = TEMPLATE_DIR
) -> list[BundleDifference]:
    """The differences between ``<bundles_dir>/<name>`` and what the template gives; nothing is written."""
    root = Path(bundles_dir) / name
    files = render_bundle(name, template_dir)
    found = []
    for relative, text in files.items():
        path = root / relative
        if not path.is_file():
            found.append(BundleDifference(path, "missing"))
        elif path.read_text(encoding="utf-8") != text:
            found.append(BundleDifference(path, "changed"))
    for folder in GENERATED_FOLDERS:
        stale = [p for p in _files_under(root / folder) if p.relative_to(root).as_posix() not in files]
        found += [BundleDifference(path, "stale") for path in stale]
    return found


def write_bundle(
    name: str, bundles_dir: str | Path = DEFAULT_BUNDLES_DIR, template_dir: str | Path = TEMPLATE_DIR
) -> list[BundleDifference]:
    """Write the generated files of bundle ``name`` that differ (atomically); return what differed before.

    Stale files are reported, never deleted.
    """
    root = Path(bundles_dir) / name
    differences = compare_bundle(name, bundles_dir, template_dir)
    files = render_bundle(name, template_dir)
    for diff in differences:
        if diff.kind != "stale":
            atomic_write_text(diff.path, files[diff.path.relative_to(root).as_posix()])
    return differences


def main(argv: Sequence[str] | None = None) -> int:
    """``python bundles/generate.py [--check] [--bundles-dir DIR] [name ...]``; 1 if a file differs or is stale."""
    parser = argparse.ArgumentParser(
        prog="python bundles/generate.py",
        description="Write bundles/<name>/ from bundles/_template/, its bundle specs and plc_monai/data/specs.py.",
    )
    parser.add_argument("names", nargs="*", help=f"bundles to write (default: all of {sorted(BUNDLES)})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--bundles-dir", default=str(DEFAULT_BUNDLES_DIR), help="folder holding the bundles")
    args = parser.parse_args(argv)
    action = compare_bundle if args.check else write_bundle
    differences = [diff for name in args.names or sorted(BUNDLES) for diff in action(name, args.bundles_dir)]
    for diff in differences:
        if diff.kind == "stale":
            print(f"{diff} (not generated by the template; delete it or add it to the template)")
        else:
            print(f"{diff} ({'differs' if args.check else 'written'})")
    if args.check and not differences:
        print("bundles are up to date with the template")
    return int(any(args.check or diff.kind == "stale" for diff in differences))


if __name__ == "__main__":
    sys.exit(main())
