"""Readers for the official download layouts of ACDC, MSD Task05 Prostate and MM-WHS MRI, and for any folder.

Each reader turns a dataset folder into a MONAI datalist sorted by ``id``; docs/data.md lists the checks.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from os.path import abspath
from pathlib import Path
from types import MappingProxyType
from typing import Any

from plc_monai.data.specs import ACDC, MMWHS, PROSTATE, DatasetSpec
from plc_monai.data.validation import VolumeValidationError, validate_datalist, validate_entry

__all__ = [
    "DatasetLayoutError", "DatasetNotFoundError", "VolumeValidationError", "validate_entry", "alias_classes",
    "ACDC_LAYOUT", "PROSTATE_LAYOUT", "MMWHS_LAYOUT", "FOLDER_LAYOUT", "MMWHS_LABEL_ALIASES",
    "read_acdc", "read_prostate", "read_mmwhs", "read_folder", "read_datalist",
]


class DatasetLayoutError(ValueError):
    """A dataset folder is missing, empty, holds another layout, or has unpaired images/labels."""


class DatasetNotFoundError(DatasetLayoutError, FileNotFoundError):
    """The dataset folder does not exist (also a :class:`FileNotFoundError`)."""


ACDC_LAYOUT = (
    "expected ACDC layout: <root>/patientNNN/patientNNN_frameMM.nii.gz with patientNNN_frameMM_gt.nii.gz "
    "and Info.cfg (ED/ES frame numbers), <root> being the 'training' folder or its parent"
)
PROSTATE_LAYOUT = (
    "expected MSD Task05 Prostate layout: <root>/imagesTr/prostate_NN.nii.gz (4D, channel 0 = T2, 1 = ADC) "
    "with <root>/labelsTr/prostate_NN.nii.gz and <root>/dataset.json"
)
MMWHS_LAYOUT = (
    "expected MM-WHS MRI layout: <root>/mr_train_10NN_image.nii.gz with mr_train_10NN_label.nii.gz "
    "(directly in <root> or in <root>/mr_train)"
)
FOLDER_LAYOUT = (
    "expected a folder of images (<images_dir>/<name>.nii.gz) and optionally labels "
    "(<labels_dir>/<name><label_suffix>.nii.gz)"
)

MMWHS_LABEL_ALIASES: Mapping[int, int] = MappingProxyType({421: 420})
"""Raw MM-WHS values read as another raw value: one label holds a few 421 voxels, a slip for the left atrium's 420."""

_NIFTI_EXT = re.compile(r"\.nii(\.gz)?$")
_ACDC_PATIENT = re.compile(r"^patient(\d{3})$")
_MSD_CASE = re.compile(r"^prostate_(\d+)\.nii\.gz$")
_MMWHS_FILE = re.compile(r"^mr_train_(\d{4})_(image|label)\.nii\.gz$")


def _split_ext(name: str) -> tuple[str, str]:
    """``"a_b.nii.gz" -> ("a_b", ".nii.gz")``; ``("name", "")`` for other extensions."""
    m = _NIFTI_EXT.search(name)
    return (name[: m.start()], m.group()) if m else (name, "")


def _visible(path: Path) -> bool:
    """False for hidden files and macOS resource forks (``._prostate_00.nii.gz``)."""
    return not path.name.startswith(".")


def _scan(folder: Path, pattern: re.Pattern[str], key: Callable[[re.Match[str]], Any]) -> dict[Any, Path]:
    """``{key(match): path}`` of the visible files of ``folder`` whose names match ``pattern``."""
    return {key(m): f for f in folder.iterdir() if (m := pattern.match(f.name)) and _visible(f)}


def _detect_layout(folder: Path) -> str | None:
    """Name the dataset layout ``folder`` looks like, or ``None`` when it matches none."""
    names = {p.name for p in folder.iterdir() if _visible(p)}
    sub = folder / "training"
    if any(_ACDC_PATIENT.match(n) for n in names) or (
        sub.is_dir() and any(_ACDC_PATIENT.match(p.name) for p in sub.iterdir())
    ):
        return "an ACDC layout (patientNNN/ folders); read it with dataset 'acdc'"
    if "imagesTr" in names or "labelsTr" in names or (folder / "Task05_Prostate").is_dir():
        return "an MSD layout (imagesTr/, labelsTr/); read it with dataset 'prostate'"
    mm_names = names | ({p.name for p in (folder / "mr_train").iterdir()} if (folder / "mr_train").is_dir() else set())
    if any(_MMWHS_FILE.match(n) for n in mm_names):
        return "an MM-WHS MRI layout (mr_train_10NN_image.nii.gz); read it with dataset 'mmwhs'"
    if any(n.startswith("ct_train_") for n in names) or "ct_train" in names:
        return "an MM-WHS CT layout (ct_train_*); the paper uses the MRI part (mr_train_*)"
    if "images" in names:
        return "a generic images/ + labels/ layout; read it with dataset 'folder'"
    return None


def _layout_error(what: str, root: Path, layout: str) -> DatasetLayoutError:
    """Build the error raised when ``root`` holds no case of the expected layout."""
    if not any(_visible(p) for p in root.iterdir()):
        return DatasetLayoutError(f"{what}: the folder {abspath(root)} is empty; {layout}")
    detected = _detect_layout(root)
    hint = f"; the folder looks like {detected}" if detected else ""
    return DatasetLayoutError(f"{what} in {abspath(root)}{hint}; {layout}")


def _require_dir(path: str | os.PathLike, layout: str) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetNotFoundError(f"dataset folder {abspath(root)} does not exist; {layout}")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset path {abspath(root)} is a file, not a folder; {layout}")
    return root


def _unpaired(
    images: Mapping[Any, Path], labels: Mapping[Any, Path], label_name: Callable, image_name: Callable
) -> list[str]:
    """One problem per image without label and label without image; ``*_name(key)`` names the missing file."""
    problems = [
        f"{abspath(images[k])}: image without label (expected {label_name(k)})"
        for k in sorted(images.keys() - labels.keys())
    ]
    return problems + [
        f"{abspath(labels[k])}: label without image (expected {image_name(k)})"
        for k in sorted(labels.keys() - images.keys())
    ]


def _entries(images: dict[str, Path], labels: dict[str, Path], dataset: str, **extra: Any) -> list[dict[str, Any]]:
    """One entry ``{"image", "label", "id", "dataset", **extra}`` per case with both files, sorted by id."""
    return [
        {"image": abspath(images[c]), "label": abspath(labels[c]), "id": c, "dataset": dataset, **copy.deepcopy(extra)}
        for c in sorted(images.keys() & labels.keys())
    ]


def _finish(
    root: Path, entries: list[dict[str, Any]], layout_problems: list[str], layout: str, validate: bool,
    spec: DatasetSpec | None, label_values: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Validate ``entries`` if asked and return them, or raise one error (layout problems decide its class)."""
    problems = layout_problems + (validate_datalist(entries, spec, label_values=label_values) if validate else [])
    if not problems:
        return entries
    body = "\n".join(f"  - {p}" for p in problems)
    if layout_problems:
        raise DatasetLayoutError(f"{len(problems)} problem(s) in dataset folder {abspath(root)} ({layout}):\n{body}")
    raise VolumeValidationError(f"{len(problems)} invalid volume(s) in dataset folder {abspath(root)}:\n{body}")


def alias_classes(spec: DatasetSpec, label_aliases: Iterable[Sequence[int]] | Mapping[int, int]) -> dict[int, int]:
    """``{raw value: class index}`` of raw-to-raw label aliases, e.g. ``{421: 2}`` for MM-WHS (420 is class 2).

    Args:
        spec: the dataset's description.
        label_aliases: ``{raw: target raw}`` or ``[[raw, target raw], ...]`` (the datalist form).

    Raises:
        ValueError: an alias target that is not one of the spec's raw values.
    """
    out = {}
    for raw, target in dict(label_aliases).items():
        if int(target) not in spec.label_map:
            known = list(spec.label_map)
            raise ValueError(f"label alias {raw} -> {target}: {target} is not a {spec.name} label value {known}")
        out[int(raw)] = spec.label_map[int(target)]
    return out


_ACDC_FRAMES = {"ed": ("ED",), "es": ("ES",), "ed+es": ("ED", "ES")}


def _read_info_cfg(path: Path) -> tuple[dict[str, int], dict[str, Any]]:
    """Phase -> frame number and the optional patient metadata of an ACDC ``Info.cfg`` (``Key: value`` lines)."""
    where = abspath(path)
    if not path.is_file():
        raise ValueError(f"{where}: missing; it gives the ED and ES frame numbers")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: cannot read ({err})") from err
    info = {key.strip(): value.strip() for key, sep, value in (line.partition(":") for line in lines) if sep}
    phases = {}
    for phase in ("ED", "ES"):
        if phase not in info:
            raise ValueError(f"{where}: no '{phase}:' line; expected lines like 'ED: 1' and 'ES: 12'")
        try:
            phases[phase] = int(float(info[phase]))
        except ValueError:
            raise ValueError(f"{where}: '{phase}: {info[phase]}' is not a frame number") from None
    meta: dict[str, Any] = {"group": info["Group"]} if "Group" in info else {}
    for key, name in (("Height", "height"), ("Weight", "weight"), ("NbFrame", "num_frames")):
        if key in info:
            try:
                value = float(info[key])
            except ValueError:
                raise ValueError(f"{where}: '{key}: {info[key]}' is not a number") from None
            meta[name] = int(value) if name == "num_frames" else value
    return phases, meta


def read_acdc(dataset_dir: str | os.PathLike, frames: str = "ed", validate: bool = True) -> list[dict[str, Any]]:
    """Datalist of the ACDC training set in its download layout (:data:`ACDC_LAYOUT`).

    Labels: 0 background, 1 RV, 2 Myo, 3 LV. The 4D cine files are ignored.

    Args:
        dataset_dir: the ACDC ``training`` folder or the folder that contains it.
        frames: ``"ed"`` (default, as the paper), ``"es"`` or ``"ed+es"``; ``Info.cfg`` gives their frame numbers.
        validate: read every selected volume and check it (:func:`validate_entry`).

    Returns:
        Entries ``{"image", "label", "id", "patient", "dataset", "frame", "phase"}`` plus ``group``, ``height``,
        ``weight``, ``num_frames`` when ``Info.cfg`` has them, sorted by ``id``: the patient number (``"001"``),
        with ``"ed+es"`` ``"001_ED"``/``"001_ES"``.

    Raises:
        ValueError: unknown ``frames``.
        DatasetLayoutError: a missing folder (:class:`DatasetNotFoundError`), another layout, a missing
            ``Info.cfg`` or frame, unpaired images or labels (all listed together).
        VolumeValidationError: bad volumes (all listed together).
    """
    key = frames.lower().replace(" ", "")
    if key not in _ACDC_FRAMES:
        raise ValueError(f"frames={frames!r} is not supported; expected one of {list(_ACDC_FRAMES)}")
    phases_wanted = _ACDC_FRAMES[key]
    root = _require_dir(dataset_dir, ACDC_LAYOUT)
    if (root / "training").is_dir():
        root = root / "training"
    patients = sorted(p for p in root.iterdir() if p.is_dir() and _ACDC_PATIENT.match(p.name))
    if not patients:
        raise _layout_error("no ACDC patientNNN folder found", root, ACDC_LAYOUT)

    layout_problems: list[str] = []
    entries: list[dict[str, Any]] = []
    for folder in patients:
        number = _ACDC_PATIENT.match(folder.name).group(1)
        frame_re = re.compile(rf"^{folder.name}_frame(\d{{2}})(_gt)?\.nii\.gz$")
        files = _scan(folder, frame_re, lambda m: (bool(m.group(2)), int(m.group(1))))
        images, labels = ({k: f for (gt, k), f in files.items() if gt == is_gt} for is_gt in (False, True))
        name = folder.name + "_frame{:02d}{}.nii.gz"
        layout_problems += _unpaired(images, labels, lambda k: name.format(k, "_gt"), lambda k: name.format(k, ""))
        try:
            phases, meta = _read_info_cfg(folder / "Info.cfg")
        except ValueError as err:
            layout_problems.append(str(err))
            continue
        for phase in phases_wanted:
            frame = phases[phase]
            if frame not in images and frame not in labels:  # otherwise reported as unpaired above
                missing = abspath(folder / name.format(frame, ""))
                layout_problems.append(f"{missing}: {phase} frame {frame} (from Info.cfg) is missing")
            if frame in images and frame in labels:
                case = number if len(phases_wanted) == 1 else f"{number}_{phase}"
                entries.append({
                    "image": abspath(images[frame]), "label": abspath(labels[frame]), "id": case, "patient": number,
                    "dataset": ACDC.name, "frame": frame, "phase": phase, **meta,
                })
    entries.sort(key=lambda e: e["id"])
    return _finish(root, entries, layout_problems, ACDC_LAYOUT, validate, ACDC)


def read_prostate(dataset_dir: str | os.PathLike, channel: int = 0, validate: bool = True) -> list[dict[str, Any]]:
    """Datalist of the MSD Task05 Prostate training set in its download layout (:data:`PROSTATE_LAYOUT`).

    Images are 4D ``[X, Y, Z, 2]``; labels 0 background, 1 PZ, 2 TZ. macOS ``._*`` files and ``imagesTs/`` are skipped.

    Args:
        dataset_dir: the ``Task05_Prostate`` folder or the folder that contains it.
        channel: image channel, 0 (T2, default, as the paper) or 1 (ADC), recorded for preprocessing to select.
        validate: read every volume and check it (:func:`validate_entry`).

    Returns:
        Entries ``{"image", "label", "id", "dataset", "channel", "channel_name"}`` sorted by ``id``, the
        3-digit case number of the paper's split lists (``prostate_00`` -> ``"000"``).

    Raises:
        ValueError: ``channel`` not 0 or 1.
        DatasetLayoutError: a missing folder (:class:`DatasetNotFoundError`), no ``imagesTr``/``labelsTr``, another
            layout, an unreadable ``dataset.json``, unpaired images or labels (all listed together).
        VolumeValidationError: bad volumes (all listed together).
    """
    if isinstance(channel, bool) or channel not in (0, 1):
        raise ValueError(f"channel={channel!r} is not supported; expected 0 (T2) or 1 (ADC)")
    root = _require_dir(dataset_dir, PROSTATE_LAYOUT)
    if not (root / "imagesTr").is_dir() and (root / "Task05_Prostate" / "imagesTr").is_dir():
        root = root / "Task05_Prostate"
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise _layout_error("no imagesTr folder found", root, PROSTATE_LAYOUT)
    if not labels_dir.is_dir():
        raise DatasetLayoutError(f"{abspath(labels_dir)} does not exist; {PROSTATE_LAYOUT}")

    layout_problems: list[str] = []
    channel_name = {0: "T2", 1: "ADC"}[channel]
    meta_file = root / "dataset.json"
    if meta_file.is_file():
        try:
            modality = json.loads(meta_file.read_text()).get("modality", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            layout_problems.append(f"{abspath(meta_file)}: not a readable JSON object ({err})")
        else:
            if isinstance(modality, Mapping) and str(channel) in modality:
                channel_name = str(modality[str(channel)])

    images, labels = (_scan(d, _MSD_CASE, lambda m: f"{int(m.group(1)):03d}") for d in (images_dir, labels_dir))
    if not images and not labels:
        raise _layout_error("no prostate_NN.nii.gz file found in imagesTr", root, PROSTATE_LAYOUT)
    layout_problems += _unpaired(
        images, labels, lambda c: f"labelsTr/{images[c].name}", lambda c: f"imagesTr/{labels[c].name}"
    )
    entries = _entries(images, labels, PROSTATE.name, channel=channel, channel_name=channel_name)
    return _finish(root, entries, layout_problems, PROSTATE_LAYOUT, validate, PROSTATE)


def read_mmwhs(
    dataset_dir: str | os.PathLike, extra_label_aliases: Mapping[int, int] = MMWHS_LABEL_ALIASES, validate: bool = True
) -> list[dict[str, Any]]:
    """Datalist of the MM-WHS MRI training set in its download layout (:data:`MMWHS_LAYOUT`).

    Args:
        dataset_dir: the folder holding the files or their ``mr_train`` folder.
        extra_label_aliases: raw values accepted and read as another raw value; the default
            :data:`MMWHS_LABEL_ALIASES` accepts 421 as 420, ``{}`` rejects it.
        validate: read every volume and check it (:func:`validate_entry`).

    Returns:
        Entries ``{"image", "label", "id", "dataset", "raw_label_aliases"}`` sorted by ``id`` (``"1001"``);
        ``raw_label_aliases`` is ``[[raw, target], ...]`` for preprocessing to apply before mapping raw
        values (``MMWHS.raw_label_values``) to classes.

    Raises:
        ValueError: an alias whose key is already a label value or whose target is not one.
        DatasetLayoutError: a missing folder (:class:`DatasetNotFoundError`), no MM-WHS file, another layout,
            unpaired images or labels (all listed together).
        VolumeValidationError: bad volumes (all listed together).
    """
    known = list(MMWHS.raw_label_values)
    pairs = sorted([int(r), int(t)] for r, t in extra_label_aliases.items())
    for raw, target in pairs:
        if raw in known:
            raise ValueError(f"extra_label_aliases: {raw} is already an MM-WHS label value {known}")
        if target not in known:
            raise ValueError(f"extra_label_aliases: target {target} of {raw} is not an MM-WHS label value {known}")
    root = _require_dir(dataset_dir, MMWHS_LAYOUT)
    if not any(_MMWHS_FILE.match(p.name) for p in root.iterdir()) and (root / "mr_train").is_dir():
        root = root / "mr_train"
    files = _scan(root, _MMWHS_FILE, lambda m: (m.group(2), m.group(1)))
    images, labels = ({c: f for (kind, c), f in files.items() if kind == k} for k in ("image", "label"))
    if not images and not labels:
        raise _layout_error("no mr_train_10NN_image.nii.gz file found", root, MMWHS_LAYOUT)
    layout_problems = _unpaired(
        images, labels, lambda c: f"mr_train_{c}_label.nii.gz", lambda c: f"mr_train_{c}_image.nii.gz"
    )
    # not "label_..." : MONAI treats every "label_*" key as the label's meta dictionary
    entries = _entries(images, labels, MMWHS.name, raw_label_aliases=pairs)
    return _finish(root, entries, layout_problems, MMWHS_LAYOUT, validate, MMWHS)


def read_folder(
    images_dir: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    image_glob: str = "*.nii.gz",
    label_suffix: str = "",
    validate: bool = True,
    label_values: Iterable[int] | None = None,
    dataset: str = "folder",
) -> list[dict[str, Any]]:
    """Datalist of any folder of images with (optional) labels paired by file name.

    ``<images_dir>/<stem>.nii.gz`` (or ``.nii``) pairs with ``<labels_dir>/<stem><label_suffix>.nii.gz``, e.g.
    MS-CMRSeg's ``subject1_DE.nii.gz`` with ``subject1_DE_manual.nii.gz``.

    Args:
        images_dir: folder of images.
        labels_dir: folder of labels (may be ``images_dir`` when ``label_suffix`` is not empty); ``None``
            for images only (inference).
        image_glob: pattern selecting the image files in ``images_dir``.
        label_suffix: text between the image stem and the extension in label names.
        validate: read every volume and check it (:func:`validate_entry`).
        label_values: allowed label values; ``None`` skips the value check.
        dataset: name written into each entry's ``dataset`` key.

    Returns:
        Entries ``{"image", ["label"], "id", "dataset"}`` sorted by ``id`` (the image stem).

    Raises:
        ValueError: labels in the image folder with an empty ``label_suffix``.
        DatasetLayoutError: a missing folder (:class:`DatasetNotFoundError`), no image matching ``image_glob``,
            unpaired images or labels (all listed together).
        VolumeValidationError: bad volumes (all listed together).
    """
    layout = f"{FOLDER_LAYOUT}, images matching {image_glob!r}, label_suffix={label_suffix!r}"
    img_root = _require_dir(images_dir, layout)
    lab_root = None if labels_dir is None else _require_dir(labels_dir, layout)
    same_folder = lab_root is not None and os.path.samefile(img_root, lab_root)
    if same_folder and not label_suffix:
        raise ValueError(
            f"labels_dir is images_dir ({abspath(img_root)}): give a label_suffix to tell labels from images"
        )
    images = {}
    for f in img_root.glob(image_glob):
        stem, ext = _split_ext(f.name)
        if f.is_file() and _visible(f) and not (same_folder and ext and stem.endswith(label_suffix)):
            images[stem] = f
    if not images:
        raise _layout_error(f"no image matching {image_glob!r} found", img_root, layout)

    layout_problems: list[str] = []
    if lab_root is None:
        entries = [{"image": abspath(images[stem]), "id": stem, "dataset": dataset} for stem in sorted(images)]
    else:
        labels: dict[str, Path] = {}
        for f in lab_root.iterdir():
            stem, ext = _split_ext(f.name)
            if not (ext and f.is_file() and _visible(f)) or (same_folder and not stem.endswith(label_suffix)):
                continue
            if not stem.endswith(label_suffix):
                layout_problems.append(f"{abspath(f)}: label name does not end with {label_suffix!r}{ext}")
                continue
            labels[stem[: len(stem) - len(label_suffix)]] = f
        layout_problems += _unpaired(
            images, labels, lambda stem: f"{abspath(lab_root / (stem + label_suffix))}.nii.gz",
            lambda stem: f"{stem}.nii.gz in {abspath(img_root)}",
        )
        entries = _entries(images, labels, dataset)
    return _finish(img_root, entries, layout_problems, layout, validate, None, label_values)


_READERS = {"acdc": read_acdc, "prostate": read_prostate, "mmwhs": read_mmwhs, "folder": read_folder}


def read_datalist(
    dataset: str, dataset_dir: str | os.PathLike, validate: bool = True, **options: Any
) -> list[dict[str, Any]]:
    """Read a dataset folder with the reader for ``dataset``.

    Args:
        dataset: ``acdc``, ``prostate``, ``mmwhs`` or ``folder`` (case-insensitive).
        dataset_dir: the dataset folder. For ``folder`` it is the images folder, or a folder with
            ``images/`` (and ``labels/``, used unless ``labels_dir`` is given) inside.
        validate: read and check every volume.
        options: reader options: ``frames`` (acdc), ``channel`` (prostate), ``extra_label_aliases``
            (mmwhs), ``labels_dir``, ``image_glob``, ``label_suffix``, ``label_values`` (folder).

    Returns:
        The datalist, sorted by ``id``.

    Raises:
        ValueError: unknown dataset or an option the reader does not take; the readers' errors.
    """
    name = str(dataset).lower()
    if name not in _READERS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_READERS)}")
    reader = _READERS[name]
    accepted = [p for p in inspect.signature(reader).parameters if p not in ("dataset_dir", "images_dir", "validate")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"option(s) {unknown} not accepted by the {name} reader; accepted: {accepted}")
    root = Path(dataset_dir).expanduser()
    if name == "folder" and (root / "images").is_dir():
        if "labels_dir" not in options and (root / "labels").is_dir():
            options["labels_dir"] = root / "labels"
        dataset_dir = root / "images"
    return reader(dataset_dir, validate=validate, **options)
