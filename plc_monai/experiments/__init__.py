"""Experiments of the paper: method overrides run through the bundles, results tables and figures.

- :mod:`.runs`: one run's folder, settings and bundle commands (``plan_runs``).
- :mod:`.harness`: ``run_experiment`` / ``experiment`` (train, evaluate, tabulate, resume).
- :mod:`.round_models`: ``RoundModelSaver``, the handler saving a model per pseudo-labeling round.
- :mod:`.figures`: t-SNE of pixel features, Dice per round, example slices.
- :mod:`.paper_results`: the paper's Tables I, II and IV-VII.
"""

from __future__ import annotations

from plc_monai.experiments.harness import DEFAULT_METHODS, aggregate, evaluate_checkpoint, experiment, run_experiment
from plc_monai.experiments.paper_results import paper_dice
from plc_monai.experiments.round_models import RoundModelSaver, round_model_path
from plc_monai.experiments.runs import RunSpec, available_methods, bundle_command, method_config, plan_runs

__all__ = [
    "DEFAULT_METHODS",
    "RoundModelSaver",
    "RunSpec",
    "aggregate",
    "available_methods",
    "bundle_command",
    "evaluate_checkpoint",
    "experiment",
    "method_config",
    "paper_dice",
    "plan_runs",
    "round_model_path",
    "run_experiment",
]
