"""Experiments of the paper: method overrides run through the bundles, results tables and figures.

:mod:`.runs` plans the runs, :mod:`.worker` executes one, :mod:`.launch` many at once (local slots, Slurm),
:mod:`.harness` tabulates them; :mod:`.round_models`, :mod:`.figures` and :mod:`.paper_results` serve it.
"""

from __future__ import annotations

from plc_monai.experiments.harness import (
    DEFAULT_METHODS,
    UnfinishedRunsError,
    aggregate,
    collect_experiment,
    evaluate_checkpoint,
    experiment,
    run_experiment,
)
from plc_monai.experiments.launch import LaunchOptions
from plc_monai.experiments.paper_results import paper_dice
from plc_monai.experiments.round_models import RoundModelSaver, round_model_path
from plc_monai.experiments.runs import (
    ExperimentSpec,
    RunSpec,
    available_methods,
    bundle_command,
    method_config,
    plan_runs,
)

__all__ = [
    "DEFAULT_METHODS", "ExperimentSpec", "LaunchOptions", "RoundModelSaver", "RunSpec", "UnfinishedRunsError",
    "aggregate", "available_methods", "bundle_command", "collect_experiment", "evaluate_checkpoint", "experiment",
    "method_config", "paper_dice", "plan_runs", "round_model_path", "run_experiment",
]
