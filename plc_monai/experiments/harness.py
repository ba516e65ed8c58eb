"""Run the paper's comparisons through the bundles and write Table-I-style results and figures.

:func:`run_experiment` executes every unfinished (method, combo) run, each in a process of its own
(:mod:`.worker`), then writes ``results.md``, ``results.csv``, ``runs.csv``, ``results.json`` and the figures;
:func:`collect_experiment` writes them from the run folders alone; :func:`experiment` is the command line.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from plc_monai.atomic_files import atomic_write_text
from plc_monai.experiments import figures as _figures
from plc_monai.experiments.launch import LaunchOptions, Progress, RunOutcome, run_local, run_submitit
from plc_monai.experiments.runs import ExperimentSpec, RunSpec, plan_runs
from plc_monai.reports import csv_text, format_duration, format_mean_std, markdown_table, mean_std, write_json

__all__ = [
    "run_experiment", "collect_experiment", "experiment", "aggregate", "format_markdown", "UnfinishedRunsError",
    "DEFAULT_METHODS", "EXPERIMENT_FILE", "METHOD_TABLE", "METHOD_LABELS", "paper_dice",
]

DEFAULT_METHODS = ("baseline", "self_training", "plc_inter", "plc_intra")
#: proposed-method runs preferred for the figures, in order
_PROPOSED = ("plc_inter", "plc_intra")
#: the experiment's spec and launch options, written at its start; ``--collect`` reads it
EXPERIMENT_FILE = "experiment.json"

# The paper's test Dice (Chaitanya et al., Section V): mean foreground Dice on the real test set over its runs,
# keyed by this package's method names, or descriptive names for the paper's other rows. Columns: ACDC
# |X_L| = 1, 2, 8; Prostate 1, 2, 8; MMWHS 1, 2, 8. Its ablations (Tables IV-VII) are in docs/experiments.md.
_DATASETS, _SETTINGS = ("acdc", "prostate", "mmwhs"), ("tr1", "tr2", "tr8")
#: TABLE I of the paper (random network initialization)
_TABLE_I: dict[str, tuple[float, ...]] = {
    "baseline": (0.614, 0.702, 0.844, 0.489, 0.550, 0.636, 0.451, 0.637, 0.787),
    "self_training": (0.690, 0.749, 0.860, 0.551, 0.598, 0.680, 0.563, 0.691, 0.801),
    "mixup": (0.695, 0.785, 0.863, 0.543, 0.593, 0.661, 0.561, 0.690, 0.796),
    "data_augment": (0.731, 0.786, 0.865, 0.585, 0.597, 0.667, 0.529, 0.661, 0.785),
    "adversarial_training": (0.536, 0.654, 0.791, 0.487, 0.544, 0.586, 0.482, 0.655, 0.779),
    "noisy_student": (0.632, 0.737, 0.836, 0.556, 0.601, 0.668, 0.593, 0.685, 0.780),
    "plc_intra": (0.761, 0.845, 0.881, 0.571, 0.613, 0.693, 0.599, 0.721, 0.803),
    "plc_inter": (0.759, 0.831, 0.883, 0.578, 0.618, 0.696, 0.572, 0.719, 0.811),
}
#: TABLE II (concurrent contrastive works), without its last row: TABLE I's plc_inter again
_TABLE_II: dict[str, tuple[float, ...]] = {
    "two_step_supervised": (0.568, 0.717, 0.841, 0.561, 0.596, 0.686, 0.509, 0.661, 0.795),
    "two_step_semi": (0.622, 0.747, 0.843, 0.568, 0.606, 0.688, 0.559, 0.704, 0.804),
    "joint_pl_in_seg": (0.420, 0.603, 0.749, 0.435, 0.495, 0.545, 0.470, 0.510, 0.638),
}
#: Which table of the paper reports each method (for the results tables' column header).
METHOD_TABLE: dict[str, str] = {**dict.fromkeys(_TABLE_I, "Table I"), **dict.fromkeys(_TABLE_II, "Table II")}
#: Row labels of the results tables, in the paper's words.
METHOD_LABELS: dict[str, str] = {
    "baseline": "Baseline (random init.)",
    "self_training": "Self-training [9]",
    "plc_intra": "Pseudo-labels joint Tr. (intra)",
    "plc_inter": "Pseudo-labels joint Tr. (inter)",
    "joint_pl_in_seg": "Joint Tr. with pseudo-labels in seg. loss",
    "two_step_semi": "Two step Tr. [26] (semi-sup)",
    "two_step_supervised": "Two step Tr. [26] (fully-sup)",
}


def paper_dice(dataset: str, setting: str, method: str) -> float | None:
    """The paper's mean foreground Dice (TABLE I, else TABLE II) for ``method`` on ``dataset`` with ``setting``.

    Args:
        dataset: ``acdc``, ``prostate`` or ``mmwhs`` (case-insensitive).
        setting: ``tr1``, ``tr2`` or ``tr8``.
        method: a method name of this package (e.g. ``plc_inter``) or of the paper's other rows
            (``mixup``, ``data_augment``, ``adversarial_training``, ``noisy_student``).

    Returns:
        The Dice value, or ``None`` when the paper reports no such number.
    """
    row = _TABLE_I.get(method) or _TABLE_II.get(method)
    dataset, setting = str(dataset).lower(), str(setting)
    if row is None or dataset not in _DATASETS or setting not in _SETTINGS:
        return None
    return row[3 * _DATASETS.index(dataset) + _SETTINGS.index(setting)]


class UnfinishedRunsError(RuntimeError):
    """Some runs failed or have not finished; the tables were written without them.

    Attributes:
        runs: ``{name: RunOutcome}`` of the runs missing from the tables.
        result: what :func:`run_experiment` would have returned.
    """

    def __init__(self, runs: Mapping[str, RunOutcome], total: int, result: Mapping[str, Any]) -> None:
        self.runs = dict(runs)
        self.result = dict(result)
        lines = [f"{len(self.runs)} of {total} runs are not in the tables ({result['files']['markdown']}):"]
        lines += [f"  {name}: {o.status}" + (f", log {o.log_file}" if o.log_file else "") for name, o in self.runs.items()]
        lines.append("Re-run the same command to retry them (finished runs are skipped, interrupted ones resume).")
        super().__init__("\n".join(lines))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_record(run: RunSpec) -> dict[str, Any]:
    """What a finished run contributes to the tables, with the phase, iteration and validation Dice of its
    ``model.pt`` and the best validation Dice per phase from :class:`~plc_monai.checkpointing.BestModelPerPhase`'s
    ``best_models.json`` (empty values without it)."""
    summary = json.loads(run.summary_file.read_text())
    round_dice = {k: json.loads(path.read_text())["mean_foreground_dice"]["mean"] for k in run.round_files()
                  if (path := run.round_eval_dir(k) / "summary.json").is_file()}
    best = _read_json(run.ckpt_dir / "best_models.json")
    shipped, phases, rounds = (best.get(k) or {} for k in ("model.pt", "phases", "rounds"))
    val_best = {"warmup": phases["warmup"].get("metric")} if "warmup" in phases else {}
    val_best.update({f"round {k}": rounds[k].get("metric") for k in sorted(rounds, key=int)})
    return {"model_phase": shipped.get("phase"), "model_iteration": shipped.get("iteration"),
            "model_val_dice": shipped.get("metric"), "val_best": val_best, "method": run.method, "combo": run.combo,
            "run_dir": str(run.run_dir), "mean_foreground_dice": summary["mean_foreground_dice"]["mean"],
            "summary": summary, "round_dice": round_dice, "train_seconds": _read_json(run.train_marker).get("seconds"),
            "dropped_overrides": run.dropped}


def _origin_table(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: per run, the phase ``model.pt`` came from and the best validation Dice of each phase."""
    known = [r for r in results if r.get("model_phase")]
    if not known:
        return []
    names = {k for r in known for k in r["val_best"]}
    columns = sorted(names, key=lambda k: -1 if k == "warmup" else int(k.split()[1]))  # warmup, round 0, ..., 9, 10

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


def aggregate(
    results: Sequence[Mapping[str, Any]], methods: Sequence[str], dataset: str, setting: str
) -> list[dict[str, Any]]:
    """One row per method: mean ± std over its runs of the test Dice, of each structure's Dice, HD95 and ASD,
    and of the Dice per round, with the paper's value.

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
        for i, structure in enumerate(runs[0]["summary"]["structures"]):
            entry = structures[structure["structure"]] = {}
            for key, field in (("dice", "dice_mean"), ("hd95", "hd95_mm_mean"), ("asd", "asd_mm_mean")):
                stats = mean_std([r["summary"]["structures"][i][field] for r in runs])
                entry.update(zip((f"{key}_mean", f"{key}_std", f"{key}_n"), stats))
        rounds = {k: dict(zip(("mean", "std", "n"), mean_std([r["round_dice"].get(k) for r in runs])))
                  for k in sorted({k for r in runs for k in r["round_dice"]})}
        value = paper_dice(dataset, setting, method)
        rows.append({"method": method, "label": METHOD_LABELS.get(method, method), "n_runs": n, "dice_mean": mean,
                     "dice_std": std, "paper_dice": value,
                     "paper_table": METHOD_TABLE.get(method) if value is not None else None,
                     "structures": structures, "rounds": rounds})
    return rows


def format_markdown(
    rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], runs: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The results as Markdown: the main table (like the paper's Table I), per-structure tables, rounds,
    which model each of ``runs`` (the runs' records) reports, missing runs, figures, machine and timing."""
    dataset, setting = meta["dataset"], meta["setting"]
    lines = [f"# Results: {dataset}, setting {setting}, split {meta['split']}", "",
             f"Combos: {', '.join(meta['combos'])} (for random splits, the split seeds); training seed {meta['seed']}; "
             f"{meta['n_runs']} runs. Dice is the test set's mean foreground Dice (per run: mean over its test "
             "volumes), mean ± std (population) over the combos.", ""]
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
    stats = [f"{k}_{s}" for k in ("dice", "hd95", "asd") for s in ("mean", "std")]
    header = ["method", "label", "n_runs", "dice_mean", "dice_std", "paper_dice", "paper_table"]
    table = [[*(r[k] for k in header), *(r["structures"][n][k] for n in names for k in stats)] for r in rows]
    return csv_text(header + [f"{n}_{k}" for n in names for k in stats], table)


def _runs_csv_text(results: Sequence[Mapping[str, Any]]) -> str:
    table = [[r["method"], r["combo"], r["mean_foreground_dice"], r["train_seconds"],
              ";".join(f"{k}:{v:.4f}" for k, v in sorted(r["round_dice"].items())), r.get("model_phase"),
              r.get("model_iteration"), r.get("model_val_dice"), r["run_dir"]] for r in results]
    return csv_text(["method", "combo", "mean_foreground_dice", "train_seconds", "round_dice", "model_phase",
                     "model_iteration", "model_val_dice", "run_dir"], table)


def _make_figures(runs: Sequence[RunSpec], results: Sequence[Mapping[str, Any]], out: Path, refresh: bool) -> list[str]:
    """Write the figures of the first combo that the finished runs allow (the proposed method: ``plc_inter``, else
    ``plc_intra``); existing PNGs are kept unless ``refresh``."""
    combo = runs[0].combo
    here = {r.method: r for r in runs if r.combo == combo}
    proposed = next((m for m in _PROPOSED if any(r.method == m for r in runs)), None)
    rounds: dict[str, dict[str, dict[int, float]]] = {}
    for r in results:
        if r["round_dice"] and r["method"] in ("self_training", *_PROPOSED):
            rounds.setdefault(METHOD_LABELS.get(r["method"], r["method"]), {})[r["combo"]] = r["round_dice"]
    draw: dict[str, Callable[[Path], Any]] = {}  # file name -> the function writing it
    if rounds:
        draw["round_dice.png"] = partial(_figures.round_curve_figure, rounds,
                                         title="test Dice per pseudo-labeling round")
    if proposed in here:
        ours = {f"proposed ({proposed})": here[proposed]}
        if "self_training" in here:
            draw[f"tsne_{combo}.png"] = partial(_figures.tsne_figure, {"self-training": here["self_training"], **ours})
        reference = next((m for m in ("baseline", "self_training") if m in here), None)
        if reference:
            columns = {reference.replace("_", "-"): here[reference], **ours}
            draw[f"examples_{combo}.png"] = partial(_figures.example_slices_figure, columns)
    for name, write in draw.items():
        if refresh or not (out / "figures" / name).is_file():
            write(out / "figures" / name)
    return [f"figures/{name}" for name in draw]


def _machine() -> str:
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
    """Tabulate the finished runs, write and print the results; :class:`UnfinishedRunsError` if runs are missing."""
    out = spec.output_dir
    finished = [r for r in runs if r.is_finished()]
    missing = {r.name: outcomes.get(r.name) or RunOutcome(r.name, "unfinished", log_file=r.log_dir / "worker.log")
               for r in runs if not r.is_finished()}
    results = [_run_record(r) for r in finished]
    rows = aggregate(results, list(spec.methods), spec.dataset, spec.setting)
    executed = sum(o.status == "done" for o in outcomes.values())
    fig_files = _make_figures(finished, results, out, refresh=collected or executed > 0) if spec.figures and finished else []
    meta = {**spec.to_dict(), "dataset": spec.dataset, "n_runs": len(runs), "executed_runs": executed,
            "not_in_table": {name: {"status": o.status, "log": str(o.log_file) if o.log_file else None, "tail": o.tail}
                             for name, o in missing.items()},
            "launch": dict(launch or {}), "threads_per_run": threads_per_run, "collected": collected,
            "seconds": seconds, "machine": _machine(), "written": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "figures": fig_files}
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
    """Execute every run of ``spec`` that is not finished yet, then write the results tables and figures.

    Each run is executed by :func:`~plc_monai.experiments.worker.execute_run` in a process of its own; the spec
    and options are saved to ``<output_dir>/experiment.json`` first. The files written: docs/experiments.md.

    Args:
        spec: the experiment.
        launch: how to execute the runs (default: one at a time, locally).

    Returns:
        ``{"meta", "rows" (:func:`aggregate`), "runs" (per-run records), "files" (written paths)}``; after a Slurm
        submission without waiting: ``{"meta", "submitted": [run names]}``.

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
    """Write the tables and figures of an experiment folder (its ``experiment.json``) from its finished runs.

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
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


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

    The arguments are those of :class:`~plc_monai.experiments.runs.ExperimentSpec` (what to compute; ``--combos``
    and ``--methods`` comma-separated) and :class:`~plc_monai.experiments.launch.LaunchOptions` (how to run it);
    any further ``--<id> <value>`` overrides a bundle id in every run whose method file does not set it.
    ``--collect`` writes the tables of ``--output_dir`` from its finished runs and runs nothing.

    Re-running the same command skips finished runs and resumes interrupted ones. Exits with status
    1 when a run failed (the tables hold the others).

    Raises:
        ValueError: when ``dataset_dir`` is missing, or for a bad value (the message names it).
    """
    if {"help", "h"} & set(overrides):
        from plc_monai.__main__ import command_help  # imports this module

        print(command_help("experiment"))
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
