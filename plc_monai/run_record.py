"""The record of what a run used: ``<output_dir>/run_info.json``.

:func:`write_run_info` writes the seed, the split choice and the software versions, and appends the
command line of each invocation, so a run's output folder says how to repeat it; the split's ids are
in ``split.json`` next to it (written by :func:`plc_monai.data.datalists.split_datalists`). It is
called from the ``initialize`` list of ``bundles/*/configs/train.json``, after the start-up checks
(:mod:`plc_monai.config_checks`), so a run that fails them records nothing.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text

__all__ = ["write_run_info"]

_LOGGER = logging.getLogger(__name__)


def _rank() -> int:
    """This process's rank: from torch.distributed when initialised, else the launcher's ``RANK`` variable."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def write_run_info(output_dir: str | os.PathLike, seed: int, filename: str = "run_info.json", **config: Any) -> Path | None:
    """Record the seed, the given config values and software versions in ``<output_dir>/<filename>``.

    The file is written atomically by rank 0 only. Each call appends the command line and time to
    an ``invocations`` list (a resumed or evaluated run adds a line); when the recorded seed or
    config differ from this call's, the record is replaced and a warning says so.

    Args:
        output_dir: the run's output folder (created when missing).
        seed: the training seed (``seed`` config id).
        filename: name of the record.
        config: further values to record, e.g. ``split``, ``setting``, ``combo``, ``split_seed``.

    Returns:
        The path written, or ``None`` on ranks other than 0.
    """
    if _rank() != 0:
        return None
    import monai
    import torch

    import plc_monai

    path = Path(output_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"seed": _jsonable(seed), "config": _jsonable(config)}
    invocations: list = []
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("seed") == record["seed"] and previous.get("config") == record["config"]:
            invocations = list(previous.get("invocations", []))
        elif previous:
            _LOGGER.warning(f"{path} described a run with other settings; replacing it.")
    invocations.append({
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": [os.path.basename(sys.executable), *sys.argv],
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    })
    record["invocations"] = invocations
    record["versions"] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
        "plc_monai": plc_monai.__version__,
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
