"""Volume checks of datalist entries: each file reads, and image and label agree with each other and the dataset.

The readers of :mod:`plc_monai.data.readers` run them with ``validate=True``; docs/data.md lists the checks.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, ImageDataError

from plc_monai.data.specs import DatasetSpec

__all__ = ["VolumeValidationError", "load_volume", "validate_entry", "validate_datalist"]


class VolumeValidationError(ValueError):
    """One or more volumes cannot be read or break the dataset's expectations."""


# OSError includes gzip.BadGzipFile, EOFError is a truncated gzip stream, MemoryError a corrupted header
_READ_ERRORS = (ImageFileError, HeaderDataError, ImageDataError, OSError, EOFError, zlib.error, ValueError, MemoryError)
_AFFINE_ATOL = 1e-3


def _nifti_from_gzip(path: str) -> Any:
    """Decompress a whole ``.nii.gz`` at once (so the gzip CRC and length are checked) and parse it."""
    raw = gzip.decompress(Path(path).read_bytes())
    header_size = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in header_size:
        return nib.Nifti1Image.from_bytes(raw)
    if 540 in header_size:
        return nib.Nifti2Image.from_bytes(raw)
    raise ImageFileError("no NIfTI-1 or NIfTI-2 header after decompression")


def load_volume(path: str) -> tuple[Any, np.ndarray]:
    """Read header and voxels of one file; ``ValueError`` naming the file when it cannot be read.

    ``.nii.gz`` files are decompressed in full, so the gzip checksum catches a corrupted download.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: file does not exist")
    try:
        img = _nifti_from_gzip(path) if path.endswith(".gz") else nib.load(path)
        data = np.asanyarray(img.dataobj)
    except _READ_ERRORS as err:
        raise ValueError(
            f"{path}: cannot read the file, it is truncated or not a valid NIfTI ({type(err).__name__}: {err})"
        ) from err
    return img, data


def _image_problems(path: str, data: np.ndarray, channel: int | None) -> list[str]:
    """Dimension, channel, finiteness and constancy problems of one image array."""
    if channel is None and data.ndim != 3:
        hint = " (a 4D cine or multi-channel file is not a single frame)" if data.ndim == 4 else ""
        return [f"{path}: expected a 3D volume, got shape {tuple(data.shape)}{hint}"]
    if channel is not None and data.ndim != 4:
        shape = tuple(data.shape)
        return [f"{path}: expected a 4D volume [X, Y, Z, channel] to select channel {channel}, got shape {shape}"]
    if channel is not None and not 0 <= channel < data.shape[3]:
        return [f"{path}: channel {channel} requested but the file has {data.shape[3]} channel(s)"]
    used = data if channel is None else data[..., channel]
    if used.size == 0:
        return [f"{path}: image has no voxels (shape {tuple(data.shape)})"]
    if used.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(used)))
        if bad:
            return [f"{path}: {bad} NaN/Inf voxel(s); expected finite intensities"]
    lo, hi = used.min(), used.max()
    if lo == hi:
        what = "image" if channel is None else f"channel {channel}"
        return [f"{path}: constant {what} (every voxel = {lo}); expected an MR volume"]
    return []


def _label_problems(
    path: str, image_path: str, image: Any | None, shape: tuple[int, ...] | None, allowed: tuple[int, ...] | None
) -> list[str]:
    """Read problems, or dimension, shape, affine and value problems of one label file against its image."""
    try:
        lab, data = load_volume(path)
    except ValueError as err:
        return [str(err)]
    problems = []
    if data.ndim != 3:
        problems.append(f"{path}: expected a 3D label volume, got shape {tuple(data.shape)}")
    elif shape is not None and tuple(data.shape) != shape:
        problems.append(f"{path}: label shape {tuple(data.shape)} differs from image shape {shape} of {image_path}")
    if image is not None and not np.allclose(lab.affine, image.affine, atol=_AFFINE_ATOL):
        diff = float(np.abs(lab.affine - image.affine).max())
        problems.append(
            f"{path}: label affine differs from the affine of {image_path} (max difference {diff:.4g} > {_AFFINE_ATOL})"
        )
    if allowed is not None and data.size:
        small_ints = data.dtype.kind in "ui" and data.dtype.itemsize <= 2 and data.min() >= 0  # bincount is faster
        present = np.flatnonzero(np.bincount(data.ravel().astype(np.intp))) if small_ints else np.unique(data)
        bad = present[~np.isin(present, np.asarray(allowed))]
        if bad.size:
            shown = ", ".join(f"{v:g}" for v in bad[:10].tolist())
            more = f" and {bad.size - 10} more" if bad.size > 10 else ""
            problems.append(f"{path}: unexpected label value(s) {shown}{more}; expected values in {list(allowed)}")
    return problems


def validate_entry(
    entry: Mapping[str, Any], spec: DatasetSpec | None = None, *, label_values: Iterable[int] | None = None
) -> None:
    """Check one datalist entry's image (and label) files, reading each once.

    The image must be 3D, or 4D ``[X, Y, Z, C]`` with ``0 <= channel < C`` when the entry has a ``channel``,
    and its used channel finite and not constant. The label must be 3D with the image's spatial shape and
    affine (within 1e-3) and hold only allowed values.

    Args:
        entry: a dict with ``image`` and optionally ``label`` paths, ``id``, ``channel``,
            ``raw_label_aliases`` (``[[raw, target], ...]``).
        spec: the dataset's description, for the allowed label values (its raw values plus the entry's
            aliases); ``None`` skips the value check unless ``label_values`` is given.
        label_values: explicit allowed label values; overrides ``spec``.

    Raises:
        VolumeValidationError: naming the file(s) and everything found wrong with this entry.
    """
    problems: list[str] = []
    image_path = str(entry["image"])
    channel = None if entry.get("channel") is None else int(entry["channel"])
    image, spatial_shape = None, None
    try:
        image, data = load_volume(image_path)
    except ValueError as err:
        problems.append(str(err))
    else:
        problems += _image_problems(image_path, data, channel)
        if data.ndim == (3 if channel is None else 4):
            spatial_shape = tuple(data.shape[:3])
    if entry.get("label") is not None:
        if label_values is None and spec is not None:
            label_values = [*spec.raw_label_values, *dict(entry.get("raw_label_aliases") or {})]
        allowed = None if label_values is None else tuple(sorted({int(v) for v in label_values}))
        problems += _label_problems(str(entry["label"]), image_path, image, spatial_shape, allowed)
    if problems:
        raise VolumeValidationError(f"case {entry.get('id', image_path)}: " + "; ".join(problems))


def validate_datalist(
    datalist: Sequence[Mapping[str, Any]], spec: DatasetSpec | None = None, *, label_values: Iterable[int] | None = None
) -> list[str]:
    """Run :func:`validate_entry` (same ``spec`` and ``label_values``) on every entry of ``datalist``.

    Returns:
        One message per bad entry (empty when all are valid).
    """
    values = None if label_values is None else tuple(label_values)
    problems = []
    for entry in datalist:
        try:
            validate_entry(entry, spec, label_values=values)
        except VolumeValidationError as err:
            problems.append(str(err))
    return problems
