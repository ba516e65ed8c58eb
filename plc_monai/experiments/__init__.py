"""Experiments of the paper: method overrides run through the bundles, results tables and figures.

:mod:`.runs` plans the runs, :mod:`.worker` executes one, :mod:`.launch` many at once (local slots, Slurm),
:mod:`.harness` tabulates them (with the paper's values); :mod:`.round_models` and :mod:`.figures` serve it.
The names below are imported lazily, so ``python -m plc_monai.experiments.worker`` runs its module only once.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "harness": ("DEFAULT_METHODS", "UnfinishedRunsError", "aggregate", "collect_experiment", "experiment",
                "paper_dice", "run_experiment"),
    "launch": ("LaunchOptions",),
    "round_models": ("RoundModelSaver", "round_model_path"),
    "runs": ("ExperimentSpec", "RunSpec", "available_methods", "bundle_command", "method_config", "plan_runs"),
    "worker": ("evaluate_checkpoint",),
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"plc_monai.experiments.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'plc_monai.experiments' has no attribute {name!r}")
