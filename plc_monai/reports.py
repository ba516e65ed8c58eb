"""Shared helpers of the report files (:mod:`plc_monai.evaluation`, :mod:`plc_monai.experiments.harness`).

An undefined value (``None``, ``NaN``, ``inf``) is left out of means, shown as ``n/a`` in Markdown, an empty
cell in CSV and ``null`` in JSON; a spread is the std with ``ddof`` degrees of freedom. Writes are atomic.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plc_monai.atomic_files import atomic_write_text

__all__ = [
    "finite_or_none", "mean_std", "format_mean_std", "format_duration", "markdown_table", "csv_text", "json_ready",
    "write_json",
]


def finite_or_none(value: Any) -> float | None:
    """``value`` as a Python float, or ``None`` when it is ``None``, ``NaN`` or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def mean_std(values: Sequence[Any], ddof: int = 0) -> tuple[float | None, float | None, int]:
    """Mean and std (``numpy.std`` with ``ddof``) over the finite, non-``None`` values, and their count.

    Returns:
        ``(mean, std, n)``; ``(None, None, 0)`` when no value is defined; ``std`` is ``None`` when ``n <= ddof``.

    Raises:
        ValueError: when ``ddof`` is negative.
    """
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}.")
    defined = [v for v in (finite_or_none(x) for x in values) if v is not None]
    n = len(defined)
    if n == 0:
        return None, None, 0
    std = float(np.std(defined, ddof=ddof)) if n > ddof else None
    return float(np.mean(defined)), std, n


def format_mean_std(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``"0.712 ± 0.031"``; ``"0.712"`` without a std; ``"n/a"`` without a mean."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def format_duration(seconds: float) -> str:
    """Whole seconds as ``H:MM:SS`` (``D days, H:MM:SS`` beyond a day)."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: the header, the separator, one line per row.

    Raises:
        ValueError: when a row has another number of cells than the header.
    """
    for row in rows:
        if len(row) != len(header):
            raise ValueError(
                f"table row {list(row)!r} has {len(row)} cells; the header has {len(header)}: {list(header)!r}."
            )
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _csv_cell(value: Any) -> Any:
    if value is None or isinstance(value, (float, np.floating)):
        value = finite_or_none(value)
        return "" if value is None else repr(value)
    return value


def csv_text(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text (``\\n`` line ends): undefined values are empty cells, floats are written in full (``repr``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def json_ready(obj: Any) -> Any:
    """``obj`` with string keys, lists for tuples, Python numbers for numpy scalars, ``None`` for non-finite floats."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON (through :func:`json_ready`, so strictly valid JSON), atomically.

    Raises:
        TypeError: when ``data`` holds an object JSON cannot represent.
    """
    return atomic_write_text(path, json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n")
