"""Run the paper's comparisons through the bundles and write Table-I-style results and figures.

:func:`run_experiment` takes an :class:`~plc_monai.experiments.runs.ExperimentSpec` (what to compute)
and :class:`~plc_monai.experiments.launch.LaunchOptions` (how: local slots, threads, GPUs, Slurm),
executes every (method, combo) run that is not finished yet, each in a process of its own
(:mod:`.worker`: the real bundle training command, then ``evaluate.json`` on the final model and on
the models saved at the end of each pseudo-labeling round), and when all have ended writes
``results.md``, ``results.csv``, ``runs.csv``, ``results.json`` and the figures to the experiment
folder. :func:`collect_experiment` writes the same files from the run folders alone (after a Slurm
job array). :func:`experiment` is the command-line form (``python -m plc_monai experiment ...``).

Resuming: a run whose ``eval/summary.json`` (and round evaluations) exist is skipped; a run whose
training finished (``train_done.json``) is only evaluated; a run whose training was interrupted is
started again with the same command, and the bundle's ``ResumeCheckpoint`` continues it from its
last ``checkpoint.pt``. A run that fails does not stop the others: the tables hold the finished
runs, name the failed ones, and :class:`UnfinishedRunsError` is raised after they are written.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plc_monai.atomic_files import atomic_write_text
from plc_monai.experiments import figures as _figures
from plc_monai.experiments.launch import LaunchOptions, Progress, RunOutcome, run_local, run_submitit
from plc_monai.experiments.paper_results import METHOD_LABELS, METHOD_TABLE, paper_dice
from plc_monai.experiments.runs import ExperimentSpec, RunSpec, plan_runs
from plc_monai.experiments.worker import evaluate_checkpoint
from plc_monai.reports import csv_text, format_duration, format_mean_std, markdown_table, mean_std, write_json

__all__ = [
    "run_experiment",
    "collect_experiment",
    "experiment",
    "aggregate",
    "format_markdown",
    "evaluate_checkpoint",
    "UnfinishedRunsError",
    "DEFAULT_METHODS",
    "EXPERIMENT_FILE",
]

DEFAULT_METHODS = ("baseline", "self_training", "plc_inter", "plc_intra")
#: proposed-method runs preferred for the figures, in order
_PROPOSED = ("plc_inter", "plc_intra")
#: the experiment's spec and launch options, written at its start; ``--collect`` reads it
EXPERIMENT_FILE = "experiment.json"


class UnfinishedRunsError(RuntimeError):
    """Some runs of an experiment failed or have not finished; the tables were written without them.

    Attributes:
        runs: ``{name: RunOutcome}`` of the runs missing from the tables.
        result: what :func:`run_experiment` would have returned (the tables of the finished runs).
    """

    def __init__(self, runs: Mapping[str, RunOutcome], total: int, result: Mapping[str, Any]) -> None:
        self.runs = dict(runs)
        self.result = dict(result)
        lines = [f"{len(self.runs)} of {total} runs are not in the tables ({result['files']['markdown']}):"]
        lines += [f"  {name}: {o.status}" + (f", log {o.log_file}" if o.log_file else "") for name, o in self.runs.items()]
        lines.append("Re-run the same command to retry them (finished runs are skipped, interrupted ones resume).")
        super().__init__("\n".join(lines))


def _run_record(run: RunSpec) -> dict[str, Any]:
    """What a finished run contributes to the tables."""
    summary = json.loads(run.summary_file.read_text())
    rounds = {}
    for k in run.round_files():
        path = run.round_eval_dir(k) / "summary.json"
        if path.is_file():
            rounds[k] = json.loads(path.read_text())["mean_foreground_dice"]["mean"]
    marker = json.loads(run.train_marker.read_text()) if run.train_marker.is_file() else {}
    return {
        **_model_origin(run.ckpt_dir / "best_models.json"),
        "method": run.method,
        "combo": run.combo,
        "run_dir": str(run.run_dir),
        "mean_foreground_dice": summary["mean_foreground_dice"]["mean"],
        "summary": summary,
        "round_dice": rounds,
        "train_seconds": marker.get("seconds"),
        "dropped_overrides": run.dropped,
    }


def _model_origin(path: Path) -> dict[str, Any]:
    """Where the run's ``model.pt`` came from, read from ``best_models.json`` (written by
    :class:`plc_monai.checkpointing.BestModelPerPhase`): its phase, iteration and validation Dice, and
    the best validation Dice of the warm-up and of each pseudo-label round. Empty values when the file
    is absent (a run from before the file existed)."""
    if not path.is_file():
        return {"model_phase": None, "model_iteration": None, "model_val_dice": None, "val_best": {}}
    data = json.loads(path.read_text())
    shipped = data.get("model.pt") or {}
    phases, rounds = data.get("phases") or {}, data.get("rounds") or {}
    val_best = {"warmup": phases["warmup"].get("metric")} if "warmup" in phases else {}
    val_best.update({f"round {k}": rounds[k].get("metric") for k in sorted(rounds, key=int)})
    return {"model_phase": shipped.get("phase"), "model_iteration": shipped.get("iteration"),
            "model_val_dice": shipped.get("metric"), "val_best": val_best}


def _origin_table(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per run, the phase ``model.pt`` (the reported model) came from and the best
    validation Dice of each phase, so a reader sees whether the joint phase beat the warm-up."""
    known = [r for r in results if r.get("model_phase")]
    if not known:
        return []
    names = {k for r in known for k in r["val_best"]}
    rounds = sorted((k for k in names if k != "warmup"), key=lambda k: int(k.split()[1]))  # "round 10" after "round 9"
    columns = (["warmup"] if "warmup" in names else []) + rounds

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    table = [[r["method"], r["combo"], f"{r['model_phase']} (iteration {r['model_iteration']})",
              cell(r["model_val_dice"]), *(cell(r["val_best"].get(k)) for k in columns), cell(r["mean_foreground_dice"])]
             for r in known]
    return ["", "## Which model each run reports", "",
            "`model.pt` is the best validation model of the phase the bundle's `model_selection` names "
            "(`final_phase`: the joint phase; `all_phases`: warm-up included); the validation columns are the "
            "best mean foreground Dice on the validation volumes in each phase.", "",
            *markdown_table(("method", "combo", "model.pt from", "its val Dice",
                             *(f"best val {k}" for k in columns), "test Dice"), table)]


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def aggregate(
    results: Sequence[Mapping[str, Any]], methods: Sequence[str], dataset: str, setting: str
) -> list[dict[str, Any]]:
    """One row per method: mean ± std over its runs (combos) of the test mean foreground Dice and of
    each structure's Dice, HD95 and ASD (each run contributes its mean over test volumes), the paper's
    value and the per-round Dice.

    Args:
        results: the runs' records (:func:`run_experiment` collects them).
        methods: the method order of the table.
        dataset: ``acdc``, ``prostate`` or ``mmwhs`` (for the paper's column).
        setting: ``tr1``/``tr2``/``tr8`` (for the paper's column).

    Returns:
        Rows with ``method``, ``label``, ``n_runs``, ``dice_mean``, ``dice_std``, ``paper_dice``,
        ``paper_table``, ``structures`` (``{name: {dice_mean, dice_std, hd95_mean, ...}}``) and
        ``rounds`` (``{round: {mean, std, n}}``).
    """
    rows = []
    for method in methods:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        mean, std, n = mean_std([r["mean_foreground_dice"] for r in runs])
        structures: dict[str, dict[str, Any]] = {}
        names = [s["structure"] for s in runs[0]["summary"]["structures"]]
        for i, name in enumerate(names):
            entry: dict[str, Any] = {}
            for key, field in (("dice", "dice_mean"), ("hd95", "hd95_mm_mean"), ("asd", "asd_mm_mean")):
                m, s, k = mean_std([r["summary"]["structures"][i][field] for r in runs])
                entry[f"{key}_mean"], entry[f"{key}_std"], entry[f"{key}_n"] = m, s, k
            structures[name] = entry
        round_ids = sorted({k for r in runs for k in r["round_dice"]})
        rounds = {}
        for k in round_ids:
            m, s, c = mean_std([r["round_dice"].get(k) for r in runs])
            rounds[k] = {"mean": m, "std": s, "n": c}
        value = paper_dice(dataset, setting, method)
        rows.append({
            "method": method,
            "label": METHOD_LABELS.get(method, method),
            "n_runs": n,
            "dice_mean": mean,
            "dice_std": std,
            "paper_dice": value,
            "paper_table": METHOD_TABLE.get(method) if value is not None else None,
            "structures": structures,
            "rounds": rounds,
        })
    return rows


def format_markdown(
    rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], runs: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The results as Markdown: the main table (like the paper's Table I), per-structure tables, rounds,
    which model each of ``runs`` (the runs' records) reports, the runs missing from the tables, figures,
    machine and timing."""
    dataset, setting = meta["dataset"], meta["setting"]
    lines = [
        f"# Results: {dataset}, setting {setting}, split {meta['split']}",
        "",
        f"Combos: {', '.join(meta['combos'])} (for random splits, the split seeds); training seed {meta['seed']}; "
        f"{meta['n_runs']} runs. Dice is the test set's mean foreground Dice (per run: mean over its test volumes), "
        "mean ± std (population) over the combos.",
        "",
    ]
    if meta["split"] != "paper":
        lines += ["The paper's column is its number for the real dataset and the same number of labeled volumes; "
                  "on other data or splits it is context, not a target.", ""]
    main = [[r["label"], format_mean_std(r["dice_mean"], r["dice_std"]),
             "n/a" if r["paper_dice"] is None else f"{r['paper_dice']:.3f} ({r['paper_table']})", r["n_runs"]]
            for r in rows]
    lines += markdown_table(("Method", "Dice (this run)", f"Paper ({dataset}, {setting})", "runs"), main)
    if rows:
        names = list(rows[0]["structures"])
        for key, title, digits in (("dice", "Dice per structure", 3), ("hd95", "HD95 per structure (mm)", 2),
                                   ("asd", "ASD per structure (mm)", 2)):
            table = [[r["label"], *(format_mean_std(r["structures"][n][f"{key}_mean"], r["structures"][n][f"{key}_std"],
                                                    digits) for n in names)] for r in rows]
            lines += ["", f"## {title}", "", *markdown_table(("Method", *names), table)]
        with_rounds = [r for r in rows if r["rounds"]]
        if with_rounds:
            max_round = max(max(r["rounds"]) for r in with_rounds)
            table = [[r["label"], *(format_mean_std(r["rounds"][k]["mean"], r["rounds"][k]["std"]) if k in r["rounds"]
                                    else "n/a" for k in range(max_round + 1))] for r in with_rounds]
            lines += ["", "## Test Dice after each pseudo-labeling round (Fig. 4; round 0: the warm-up model)", "",
                      *markdown_table(("Method", *(f"round {k}" for k in range(max_round + 1))), table)]
    lines += _origin_table(runs)
    missing = meta.get("not_in_table") or {}
    if missing:
        lines += ["", f"## Runs not in the tables ({len(missing)} of {meta['n_runs']})", "",
                  *markdown_table(("run", "status", "log"),
                                  [[name, m["status"], f"`{m['log']}`" if m.get("log") else ""] for name, m in missing.items()])]
    if meta.get("figures"):
        lines += ["", "## Figures", ""] + [f"- `{f}`" for f in meta["figures"]]
    if meta.get("collected"):
        timing = "Collected from the run folders (no run executed by this invocation)."
    else:
        launch = meta.get("launch") or {}
        how = (f"{launch.get('parallel', 1)} at once in local slots" if launch.get("executor", "local") == "local"
               else f"executor {launch.get('executor')}")
        timing = (f"Wall time of the last invocation ({meta['executed_runs']} runs executed, {how}, "
                  f"{meta.get('threads_per_run') or 'default'} CPU threads per run): {format_duration(meta['seconds'])}.")
    lines += ["", f"Machine: {meta['machine']}. Written {meta['written']}. {timing}", ""]
    return "\n".join(lines)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    names = list(rows[0]["structures"]) if rows else []
    header = ["method", "label", "n_runs", "dice_mean", "dice_std", "paper_dice", "paper_table"]
    for n in names:
        header += [f"{n}_{k}_{s}" for k in ("dice", "hd95", "asd") for s in ("mean", "std")]
    table = []
    for r in rows:
        row = [r["method"], r["label"], r["n_runs"], r["dice_mean"], r["dice_std"], r["paper_dice"], r["paper_table"]]
        for n in names:
            row += [r["structures"][n][f"{k}_{s}"] for k in ("dice", "hd95", "asd") for s in ("mean", "std")]
        table.append(row)
    return csv_text(header, table)


def _runs_csv_text(results: Sequence[Mapping[str, Any]]) -> str:
    table = [[r["method"], r["combo"], r["mean_foreground_dice"], r["train_seconds"],
              ";".join(f"{k}:{v:.4f}" for k, v in sorted(r["round_dice"].items())), r.get("model_phase"),
              r.get("model_iteration"), r.get("model_val_dice"), r["run_dir"]] for r in results]
    return csv_text(["method", "combo", "mean_foreground_dice", "train_seconds", "round_dice", "model_phase",
                     "model_iteration", "model_val_dice", "run_dir"], table)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


def _make_figures(runs: Sequence[RunSpec], results: Sequence[Mapping[str, Any]], out: Path, refresh: bool) -> list[str]:
    """Write the figures that the finished runs allow; existing PNGs are kept unless ``refresh``."""
    fig_dir = out / "figures"
    written: list[str] = []
    by_key = {(r.method, r.combo): r for r in runs}
    combos = list(dict.fromkeys(r.combo for r in runs))
    proposed = next((m for m in _PROPOSED if any(r.method == m for r in runs)), None)

    def want(path: Path) -> bool:
        return refresh or not path.is_file()

    rounds: dict[str, dict[str, dict[int, float]]] = {}
    for r in results:
        if r["round_dice"] and r["method"] in ("self_training", *_PROPOSED):
            rounds.setdefault(METHOD_LABELS.get(r["method"], r["method"]), {})[r["combo"]] = r["round_dice"]
    if rounds:
        path = fig_dir / "round_dice.png"
        if want(path):
            _figures.round_curve_figure(rounds, path, title="test Dice per pseudo-labeling round")
        written.append(str(path.relative_to(out)))
    combo = combos[0]
    if proposed and {("self_training", combo), (proposed, combo)} <= by_key.keys():
        path = fig_dir / f"tsne_{combo}.png"
        if want(path):
            _figures.tsne_figure({"self-training": by_key[("self_training", combo)],
                                  f"proposed ({proposed})": by_key[(proposed, combo)]}, path)
        written.append(str(path.relative_to(out)))
    reference = next((m for m in ("baseline", "self_training") if (m, combo) in by_key), None)
    if proposed and reference and (proposed, combo) in by_key:
        path = fig_dir / f"examples_{combo}.png"
        if want(path):
            _figures.example_slices_figure({reference.replace("_", "-"): by_key[(reference, combo)],
                                            f"proposed ({proposed})": by_key[(proposed, combo)]}, path)
        written.append(str(path.relative_to(out)))
    return written


# ---------------------------------------------------------------------------------------------
# the experiment
# ---------------------------------------------------------------------------------------------


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node() or 'host'}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"


def _write_results(
    spec: ExperimentSpec,
    runs: Sequence[RunSpec],
    outcomes: Mapping[str, RunOutcome],
    seconds: float,
    launch: Mapping[str, Any] | None,
    threads_per_run: int | None,
    collected: bool,
) -> dict[str, Any]:
    """Tabulate the finished runs, write the result files, print the Markdown; raise if some runs are missing.

    Raises:
        UnfinishedRunsError: after writing, when a run failed or has not finished.
    """
    out = spec.output_dir
    finished = [r for r in runs if r.is_finished()]
    missing = {r.name: outcomes.get(r.name) or RunOutcome(r.name, "unfinished", log_file=r.log_dir / "worker.log")
               for r in runs if not r.is_finished()}
    results = [_run_record(r) for r in finished]
    rows = aggregate(results, list(spec.methods), spec.dataset, spec.setting)
    executed = sum(o.status == "done" for o in outcomes.values())
    fig_files = _make_figures(finished, results, out, refresh=collected or executed > 0) if spec.figures and finished else []
    meta = {
        **spec.to_dict(),
        "dataset": spec.dataset,
        "n_runs": len(runs),
        "executed_runs": executed,
        "not_in_table": {name: {"status": o.status, "log": str(o.log_file) if o.log_file else None, "tail": o.tail}
                         for name, o in missing.items()},
        "launch": dict(launch or {}),
        "threads_per_run": threads_per_run,
        "collected": collected,
        "seconds": seconds,
        "machine": _machine(),
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "figures": fig_files,
    }
    files = {"markdown": out / "results.md", "csv": out / "results.csv", "runs_csv": out / "runs.csv",
             "json": out / "results.json"}
    markdown = format_markdown(rows, meta, results)
    atomic_write_text(files["markdown"], markdown)
    atomic_write_text(files["csv"], _csv_text(rows))
    atomic_write_text(files["runs_csv"], _runs_csv_text(results))
    write_json(files["json"], {"meta": meta, "rows": rows, "runs": results})
    print(markdown, flush=True)
    result = {"meta": meta, "rows": rows, "runs": results, "files": {k: str(v) for k, v in files.items()}}
    if missing:
        raise UnfinishedRunsError(missing, len(runs), result)
    return result


def run_experiment(spec: ExperimentSpec, launch: LaunchOptions | None = None) -> dict[str, Any]:
    """Execute every run of ``spec`` that is not finished yet, then write the results table and figures.

    Runs are planned by :func:`plc_monai.experiments.runs.plan_runs` (folders
    ``<output_dir>/runs/<method>/<combo>``, shared cache). Each unfinished run is executed in a
    process of its own by :func:`plc_monai.experiments.worker.execute_run` (``python -m monai.bundle
    run training`` with the method file merged after ``train.json``, resuming an interrupted training
    from its checkpoint; then ``evaluate.json`` on ``models/model.pt`` and on the round models),
    ``launch.parallel`` at once in local slots or as a Slurm job array (``launch.executor``). Progress
    lines give the runs done / running / failed, the elapsed time and an ETA. The spec and options
    are saved to ``<output_dir>/experiment.json`` first (what :func:`collect_experiment` reads).

    When all runs have ended, written to ``output_dir``: ``results.md``, ``results.csv`` (one row
    per method), ``runs.csv`` (one row per run), ``results.json`` (everything, with the per-run
    summaries), and ``figures/`` for the first combo, when the runs they need are finished:
    ``round_dice.png`` (self-training and proposed runs), ``tsne_<combo>.png`` (self-training and
    proposed), ``examples_<combo>.png`` (baseline, or else self-training, and proposed). The proposed
    method is ``plc_inter`` if it ran, else ``plc_intra``. Figures are redrawn when a run was executed.

    Args:
        spec: the experiment.
        launch: how to execute the runs (default: one at a time, locally).

    Returns:
        ``{"meta": ..., "rows": aggregate rows, "runs": per-run records, "files": written paths}``;
        after a Slurm submission without waiting (``launch.wait`` false): ``{"meta": ..., "submitted":
        [run names]}`` and no tables.

    Raises:
        UnfinishedRunsError: after the tables of the finished runs are written, when a run failed.
        ValueError: ``launch.devices`` with a ``spec.device`` other than ``cuda``/``cuda:0``.
    """
    launch = launch or LaunchOptions()
    if launch.devices and spec.device is not None and str(spec.device) not in ("cuda", "cuda:0"):
        raise ValueError(f"devices {list(launch.devices)} give each run one GPU, seen as cuda:0; device must be None, "
                         f"'cuda' or 'cuda:0', got {spec.device!r}.")
    runs = plan_runs(spec)
    out = spec.output_dir
    write_json(out / EXPERIMENT_FILE, {"spec": spec.to_dict(), "launch": launch.to_dict(), "command": sys.argv})
    todo = [r for r in runs if not r.is_finished()]
    local = launch.executor == "local"
    slots = launch.parallel if local else (launch.array_parallelism or len(todo))
    threads = launch.threads_per_run()
    print(f"experiment: {len(runs)} runs ({len(spec.methods)} methods x {len(spec.combos)} combos) of {spec.dataset} "
          f"{spec.setting}, split {spec.split}, into {out}; {len(todo)} to run, executor {launch.executor}, "
          f"{slots} at once, {threads or 'default'} CPU threads per run", flush=True)
    progress = Progress(len(runs), len(runs) - len(todo), slots, launch.status_interval)
    for run in runs:
        if run not in todo:
            progress.say(run.name, "finished earlier (eval/summary.json exists), skipped")
    start = time.perf_counter()
    if not todo:
        outcomes: dict[str, RunOutcome] = {}
    elif local:
        outcomes = run_local(todo, launch, progress)
    else:
        outcomes = run_submitit(todo, launch, out / "submitit", progress, cpu_only=str(spec.device).startswith("cpu"))
    submitted = [name for name, o in outcomes.items() if o.status == "submitted"]
    if submitted:
        print(f"{len(submitted)} runs submitted; when they have ended, write the tables with:\n"
              f"  python -m plc_monai experiment --collect --output_dir {out}", flush=True)
        return {"meta": {**spec.to_dict(), "launch": launch.to_dict()}, "submitted": submitted}
    return _write_results(spec, runs, outcomes, time.perf_counter() - start, launch.to_dict(), threads, collected=False)


def collect_experiment(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Write the tables and figures of an experiment folder from its finished runs, executing nothing.

    For an experiment whose runs were executed elsewhere (a Slurm job array submitted with
    ``--wait False``, or a harness that was stopped): the spec is read from
    ``<output_dir>/experiment.json``.

    Returns:
        As :func:`run_experiment`.

    Raises:
        FileNotFoundError: when ``output_dir`` has no ``experiment.json``.
        UnfinishedRunsError: after the tables are written, when some runs have not finished.
    """
    path = Path(output_dir).expanduser().resolve() / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {path.parent} is not the output folder of an experiment "
                                "(python -m plc_monai experiment writes it when it starts).")
    saved = json.loads(path.read_text())
    spec = ExperimentSpec.from_dict(saved["spec"])
    runs = plan_runs(spec)
    print(f"collecting {len(runs)} runs of {spec.output_dir}", flush=True)
    return _write_results(spec, runs, {}, 0.0, saved.get("launch"), None, collected=True)


def _as_list(value: str | Sequence[Any] | int | None) -> list[str]:
    """``"a,b"``, ``("a", "b")`` (how fire passes ``a,b``) or ``3`` -> ``["a", "b"]`` / ``["3"]``; ``None`` -> ``[]``."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _help_text() -> str:
    from fire import helptext, trace

    component_trace = trace.FireTrace(experiment, name="plc_monai")
    component_trace.AddAccessedProperty(experiment, "experiment", ["experiment"], None, None)
    return helptext.HelpText(experiment, component_trace)


def experiment(
    bundle: str = "bundles/acdc",
    setting: str = "tr1",
    combos: str | Sequence[str] = "c1,c2,c3",
    methods: str | Sequence[str] = ",".join(DEFAULT_METHODS),
    dataset_dir: str | None = None,
    output_dir: str = "experiment",
    split: str = "paper",
    seed: int = 0,
    device: str | None = None,
    cache_dir: str | None = None,
    figures: bool = True,
    threads: int | None = None,
    parallel: int = 1,
    devices: str | Sequence[Any] | None = None,
    executor: str = "local",
    partition: str | None = None,
    time_limit_min: int = 720,
    gpus_per_job: int | None = None,
    cpus_per_job: int | None = None,
    mem_gb: float | None = None,
    array_parallelism: int | None = None,
    wait: bool = True,
    collect: bool = False,
    **overrides: Any,
) -> None:
    """Train, evaluate and tabulate every (method, combo): the paper's comparisons through the bundles.

    Example::

        python -m plc_monai experiment --bundle bundles/acdc --setting tr1 --combos c1,c2,c3 \\
            --methods baseline,self_training,plc_inter,plc_intra --dataset_dir /data/ACDC/training --output_dir OUT

    What to compute (:class:`~plc_monai.experiments.runs.ExperimentSpec`): ``--bundle``,
    ``--setting``, ``--combos`` and ``--methods`` (comma-separated), ``--dataset_dir``,
    ``--output_dir``, ``--split`` (``paper``, ``random``, a folder of ``<setting>_<combo>.json``
    split files, or one split file), ``--seed``, ``--device``, ``--cache_dir``, ``--figures``. Any
    further ``--<id> <value>`` is a bundle override for every run (e.g. ``--lambda_cont 1.0``); ids
    that a method file sets itself are not overridden for that method.

    How to run it (:class:`~plc_monai.experiments.launch.LaunchOptions`): ``--parallel K`` runs at
    once on this machine, ``--threads`` CPU threads per run (default with K > 1: the cores split
    between the runs), ``--devices 0,1`` one GPU per run from the list; ``--executor slurm`` submits
    a job array through submitit (``--partition``, ``--time_limit_min``, ``--gpus_per_job``,
    ``--cpus_per_job``, ``--mem_gb``, ``--array_parallelism``; ``--wait False`` returns after
    submitting); ``--executor submitit_local`` runs those jobs here. ``--collect`` writes the tables
    of ``--output_dir`` from its finished runs and runs nothing.

    Re-running the same command skips finished runs and resumes interrupted ones. Exits with status
    1 when a run failed (the tables hold the others).

    Raises:
        ValueError: when ``dataset_dir`` is missing, or for a bad value (the message names it).
    """
    if {"help", "h"} & set(overrides):
        print(_help_text())
        return
    try:
        if collect:
            collect_experiment(output_dir)
            return
        if dataset_dir is None:
            raise ValueError("--dataset_dir is required: the dataset folder the bundle reads.")
        spec = ExperimentSpec(bundle, str(setting), _as_list(combos), _as_list(methods), dataset_dir, output_dir,
                              split=split, seed=int(seed), overrides=overrides, device=device, cache_dir=cache_dir,
                              figures=bool(figures))
        launch = LaunchOptions(executor=executor, parallel=int(parallel), devices=_as_list(devices), threads=threads,
                               partition=partition, time_limit_min=int(time_limit_min), gpus_per_job=gpus_per_job,
                               cpus_per_job=cpus_per_job, mem_gb=mem_gb, array_parallelism=array_parallelism,
                               wait=bool(wait))
        run_experiment(spec, launch)
    except UnfinishedRunsError as err:
        print(err, file=sys.stderr, flush=True)
        raise SystemExit(1) from err
