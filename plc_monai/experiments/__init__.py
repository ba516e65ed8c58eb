"""Experiments of the paper: method overrides run through the bundles, results tables and figures.

- :mod:`.runs`: the experiment (``ExperimentSpec``), one run's folder, settings and bundle commands (``plan_runs``).
- :mod:`.worker`: one run from start to end in its own process (train, evaluate, resume).
- :mod:`.launch`: many runs at once: local slots (``--parallel``, ``--devices``) or a Slurm job array (submitit).
- :mod:`.harness`: ``run_experiment`` / ``collect_experiment`` / ``experiment`` (tables, figures, resume).
- :mod:`.round_models`: ``RoundModelSaver``, the handler saving a model per pseudo-labeling round.
- :mod:`.figures`: t-SNE of pixel features, Dice per round, example slices.
- :mod:`.paper_results`: the paper's Tables I, II and IV-VII.
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
    "DEFAULT_METHODS",
    "ExperimentSpec",
    "LaunchOptions",
    "RoundModelSaver",
    "RunSpec",
    "UnfinishedRunsError",
    "aggregate",
    "available_methods",
    "bundle_command",
    "collect_experiment",
    "evaluate_checkpoint",
    "experiment",
    "method_config",
    "paper_dice",
    "plan_runs",
    "round_model_path",
    "run_experiment",
]
