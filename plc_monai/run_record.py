"""The record of what a run used: ``<output_dir>/run_info.json`` (seed, split choice, versions, command lines)."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import monai
import torch

import plc_monai
from plc_monai.reports import json_ready, write_json
from plc_monai.runtime import is_main_process

__all__ = ["write_run_info"]

_LOGGER = logging.getLogger(__name__)


def write_run_info(
    output_dir: str | os.PathLike, seed: int, filename: str = "run_info.json", **config: Any
) -> Path | None:
    """Record the seed, the given config values and software versions in ``<output_dir>/<filename>``.

    Written atomically by rank 0 only (torch.distributed's, else the launcher's ``RANK``). Each call
    appends its command line and time to ``invocations``; when the recorded seed or config differ
    from this call's, the record is replaced and a warning says so.

    Args:
        output_dir: the run's output folder (created when missing).
        seed: the training seed (``seed`` config id).
        filename: name of the record.
        config: further values to record, e.g. ``split``, ``setting``, ``combo``, ``split_seed``.

    Returns:
        The path written, or ``None`` on ranks other than 0.
    """
    if not is_main_process() or os.environ.get("RANK", "0") != "0":
        return None
    path = Path(output_dir) / filename
    # as write_json writes it and JSON reads it back (tuples as lists, NaN as null, other objects as text), so
    # that it compares equal to the previous record of the same settings
    record: dict[str, Any] = json.loads(json.dumps(json_ready({"seed": seed, "config": config}), default=str))
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
    record["invocations"] = invocations + [{
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": [os.path.basename(sys.executable), *sys.argv],
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }]
    record["versions"] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__,
        "plc_monai": plc_monai.__version__,
    }
    write_json(path, record)
    return path
