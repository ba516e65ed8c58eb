"""Writing a phantom dataset: the public functions, the file names of each layout, the marker file, stale files."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from plc_monai.atomic_files import atomic_write_bytes
from plc_monai.data.phantom.acdc import acdc_cycle, acdc_subject
from plc_monai.data.phantom.imaging import subject_rng
from plc_monai.data.phantom.mmwhs import mmwhs_subject
from plc_monai.data.phantom.prostate import prostate_subject
from plc_monai.data.specs import get_spec

__all__ = ["MARKER_NAME", "phantom_files", "write_phantom_dataset"]

MARKER_NAME = "PHANTOM_README.txt"
"""Name of the marker file written at the root of every phantom dataset."""

_MAX_SUBJECTS = {"acdc": 999, "prostate": 100, "mmwhs": 99}
_SUBJECTS = {"acdc": acdc_subject, "prostate": prostate_subject, "mmwhs": mmwhs_subject}


def write_phantom_dataset(
    dataset: str,
    out_dir: str | os.PathLike,
    num_subjects: int = 12,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    num_slices: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a SYNTHETIC dataset in exactly the official raw layout of ``dataset``.

    Default sizes follow the real data, scaled down for a CPU (docs/data.md). Writing a phantom of the
    same dataset again replaces it (files of the old one are removed); the marker file
    ``PHANTOM_README.txt`` says that the data is synthetic and lists the files.

    Args:
        dataset: ``"acdc"``, ``"prostate"`` or ``"mmwhs"`` (case-insensitive).
        out_dir: folder to write into; created with its parents when missing.
        num_subjects: number of subjects (ACDC: up to 999, prostate: up to 100, MM-WHS: up to 99).
        seed: non-negative seed; the same seed gives identical files.
        image_size: in-plane array size ``(X, Y)`` of every subject, each at least 32 (the field of
            view in mm is kept, the spacing changes). ``None`` draws a size per subject.
        num_slices: number of slices ``Z`` of every subject, at least 4. ``None`` draws one per subject.
        overwrite: allow writing into a non-empty folder that is not a phantom of the same dataset.
            Files already there are left alone unless the phantom writes a file of the same name.

    Returns:
        The output folder (``Path``).

    Raises:
        ValueError: unknown dataset, ``num_subjects``, ``seed``, ``image_size`` or ``num_slices``
            out of range, or ``out_dir`` is an existing file.
        FileExistsError: ``out_dir`` is non-empty and not a phantom of the same dataset, and
            ``overwrite`` is false.
    """
    name = get_spec(dataset).name
    num_subjects = _check_int("num_subjects", num_subjects, 1, _MAX_SUBJECTS[name])
    seed = _check_int("seed", seed, 0, None)
    if image_size is not None:
        if not isinstance(image_size, Sequence) or isinstance(image_size, str) or len(image_size) != 2:
            raise ValueError(f"image_size must be a pair (X, Y) of integers, got {image_size!r}")
        image_size = tuple(_check_int(f"image_size[{i}]", n, 32, None) for i, n in enumerate(image_size))
    if num_slices is not None:
        num_slices = _check_int("num_slices", num_slices, 4, None)

    out = Path(out_dir)
    old_files = _prepare_out_dir(out, name, overwrite)
    new_files = phantom_files(name, num_subjects, seed)
    settings = {
        "dataset": name,
        "seed": seed,
        "num_subjects": num_subjects,
        "image_size": "default" if image_size is None else f"{image_size[0]}x{image_size[1]}",
        "num_slices": "default" if num_slices is None else str(num_slices),
    }
    # The marker goes first (listing old and new files), so an interrupted run can be repeated
    # without overwrite=True and still cleans up; it is rewritten with the final list at the end.
    _write_marker(out, settings, sorted(set(old_files) | set(new_files)))
    for index in range(num_subjects):
        contents = _SUBJECTS[name](subject_rng(seed, name, index), index, image_size, num_slices, seed)
        for rel_path, content in zip(_subject_files(name, index, seed), contents):
            if isinstance(content, nib.Nifti1Image):  # no gzip time stamp: the same arrays give the same bytes
                content = gzip.compress(content.to_bytes(), compresslevel=1, mtime=0)
            atomic_write_bytes(out / rel_path, content)
    if name == "prostate":
        atomic_write_bytes(out / "dataset.json", _msd_dataset_json(num_subjects, seed))
    for rel_path in sorted(set(old_files) - set(new_files)):
        _remove_stale(out, rel_path)
    _write_marker(out, settings, new_files)
    return out


def phantom_files(dataset: str, num_subjects: int, seed: int = 0) -> list[str]:
    """Sorted relative paths (``/`` separators) of the files :func:`write_phantom_dataset` writes.

    The marker file is not included. The ACDC end-systole frame numbers depend on ``seed``.

    Raises:
        ValueError: unknown dataset.
    """
    name = get_spec(dataset).name
    files = [path for index in range(num_subjects) for path in _subject_files(name, index, seed)]
    return sorted(files + ["dataset.json"] if name == "prostate" else files)


def _subject_files(name: str, index: int, seed: int) -> list[str]:
    """Paths of subject ``index``'s files, in the order its generator returns their contents."""
    if name == "acdc":
        pid = f"patient{index + 1:03d}"
        stems = [f"training/{pid}/{pid}_frame{frame:02d}" for frame in (1, acdc_cycle(seed, index)[0])]
        return [f"{stem}{gt}.nii.gz" for stem in stems for gt in ("", "_gt")] + [f"training/{pid}/Info.cfg"]
    if name == "prostate":
        return [f"imagesTr/prostate_{index:02d}.nii.gz", f"labelsTr/prostate_{index:02d}.nii.gz"]
    return [f"mr_train_{1001 + index}_image.nii.gz", f"mr_train_{1001 + index}_label.nii.gz"]


def _check_int(what: str, value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{what} must be {bound}, got {value}")
    return int(value)


def _prepare_out_dir(out: Path, dataset: str, overwrite: bool) -> list[str]:
    """Check that ``out`` may be written; return the files a previous phantom of ``dataset`` there listed."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    try:
        lines = (out / MARKER_NAME).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    ours = bool(lines) and lines[0].startswith("SYNTHETIC PHANTOM DATA")
    entries = [[part.strip() for part in line.split(":", 1)] for line in lines[1:] if ours and ":" in line]
    found = next((value for key, value in entries if key == "dataset"), None)
    if found == dataset:
        return [value for key, value in entries if key == "file"]
    if overwrite:
        return []
    what = "not a phantom" if found is None else f"a phantom of {found!r}"
    raise FileExistsError(
        f"out_dir {str(out)!r} is not empty and is {what}; expected an empty folder or a "
        f"{dataset!r} phantom (pass overwrite=True to write into it anyway)"
    )


def _write_marker(out: Path, settings: dict[str, object], files: Sequence[str]) -> None:
    lines = [
        "SYNTHETIC PHANTOM DATA - no patient data.",
        "",
        "Generated by plc_monai.data.phantom.write_phantom_dataset in the raw layout of the named dataset;",
        "anatomy, intensities, noise and bias fields are simulated.",
        "",
        *(f"{key}: {value}" for key, value in settings.items()),
        "",
        *(f"file: {rel}" for rel in files),
        "",
    ]
    atomic_write_bytes(out / MARKER_NAME, "\n".join(lines).encode("utf-8"))


def _remove_stale(out: Path, rel_path: str) -> None:
    """Remove a file of a previous phantom (only inside ``out``) and its folder when left empty."""
    root = out.resolve()
    path = (out / rel_path).resolve()
    if root not in path.parents or not path.is_file():
        return
    path.unlink()
    if path.parent != root and not any(path.parent.iterdir()):
        path.parent.rmdir()


def _msd_dataset_json(num_subjects: int, seed: int) -> bytes:
    pairs = [_subject_files("prostate", index, seed) for index in range(num_subjects)]
    content = {
        "name": "Prostate",
        "description": "SYNTHETIC phantom of the Medical Segmentation Decathlon Task05 prostate layout (peripheral "
        f"and transition zone), generated by plc_monai with seed {seed}; no patient data",
        "reference": "synthetic, plc_monai.data.phantom",
        "licence": "synthetic data generated by plc_monai (Apache-2.0)",
        "release": "synthetic phantom",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": num_subjects,
        "numTest": 0,
        "training": [{"image": f"./{image}", "label": f"./{label}"} for image, label in pairs],
        "test": [],
    }
    return (json.dumps(content, indent=4) + "\n").encode("utf-8")
