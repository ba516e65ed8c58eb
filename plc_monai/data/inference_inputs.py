"""The volumes an inference run segments, every one checked before anything runs: one error lists each bad file."""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plc_monai.data.validation import load_volume

__all__ = ["list_inference_inputs", "InferenceInputError"]


class InferenceInputError(ValueError):
    """One or more inference inputs cannot be segmented; the message lists each file and why."""


def _check(path: Path, num_channels: int | None) -> str | None:
    """A problem with ``path`` or ``None``: readable NIfTI, 3D (or 4D with ``num_channels``+ channels last)."""
    try:
        shape = load_volume(str(path))[0].shape  # the whole file: a cut-off .nii.gz keeps a valid header
    except ValueError as e:
        return str(e)
    if len(shape) == 3 or (len(shape) == 4 and num_channels is not None and shape[3] >= num_channels):
        return None
    if len(shape) == 4 and num_channels is not None:
        return f"{path}: has {shape[3]} channel(s) on its 4th axis, expected at least {num_channels}"
    expected = "a 3D volume" + (f" or a 4D volume with {num_channels}+ channels last" if num_channels else "")
    return f"{path}: shape {tuple(shape)} is not {expected}"


def list_inference_inputs(
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | Sequence[Any] | None = None,
    pattern: str = "*.nii.gz",
    num_channels: int | None = None,
    exclude: Sequence[str] = (),
) -> list[dict[str, str]]:
    """Inputs of an inference run as a MONAI datalist ``[{"image": path, "id": name}, ...]``.

    Args:
        dataset_dir: a folder whose files matching ``pattern`` (recursively) are segmented, or a single file.
        datalist: instead of a folder, a list of paths or dicts with ``image``, or a JSON file holding one.
        pattern: file pattern inside ``dataset_dir``.
        num_channels: channels a 4D input must have (e.g. 2 for MSD prostate T2+ADC); ``None``: 3D only.
        exclude: file-name patterns left out of a folder, e.g. ``["*_gt.nii.gz", "*_4d.nii.gz"]`` so
            that an ACDC patient folder yields only its frames.

    Returns:
        One entry per volume, sorted by path; ``id`` is the file name without ``.nii``/``.nii.gz``.

    Raises:
        InferenceInputError: no input found, or any input unreadable / not 3D (all bad files listed).
    """
    if datalist is not None:
        if isinstance(datalist, (str, os.PathLike)):
            datalist = json.loads(Path(datalist).read_text())
        paths = [Path(d["image"] if isinstance(d, dict) else d) for d in datalist]
    elif dataset_dir is not None:
        root = Path(dataset_dir)
        if root.is_file():
            paths = [root]
        elif root.is_dir():
            paths = sorted(
                p for p in root.rglob(pattern)
                if not p.name.startswith("._") and not any(fnmatch.fnmatch(p.name, x) for x in exclude)
            )
        else:
            raise InferenceInputError(f"{root}: no such file or folder; expected a folder of {pattern} volumes.")
    else:
        raise InferenceInputError("give dataset_dir (a folder of NIfTI volumes) or datalist.")
    if not paths:
        raise InferenceInputError(f"no {pattern} volume found in {dataset_dir}.")
    problems = [problem for problem in (_check(path, num_channels) for path in paths) if problem]
    if problems:
        raise InferenceInputError(
            f"{len(problems)} of {len(paths)} input volume(s) cannot be segmented (nothing was run):\n  "
            + "\n  ".join(problems)
        )
    return [{"image": str(path.resolve()), "id": re.sub(r"\.nii(\.gz)?$", "", path.name)} for path in paths]
