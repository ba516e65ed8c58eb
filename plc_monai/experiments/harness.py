"""Run the paper's comparisons through the bundles and write Table-I-style results and figures.

:func:`run_experiment` trains every (method, combo) with the real bundle command in a subprocess,
evaluates each final model and the models saved at the end of each pseudo-labeling round on the test
split with ``evaluate.json`` merged after the run's configs (in this process: the same configs and
settings as ``python -m monai.bundle run --config_file "[train.json, <method>.json, evaluate.json]"``,
without a second interpreter start per model), and writes ``results.md``, ``results.csv``, ``runs.csv``, ``results.json`` and the figures
to the experiment folder. :func:`experiment` is its command-line form
(``python -m plc_monai experiment ...``).

Resuming: a run whose ``eval/summary.json`` (and round evaluations) exist is skipped; a run whose
training finished (``train_done.json``) is only evaluated; a run whose training was interrupted is
started again with the same command, and the bundle's ``ResumeCheckpoint`` continues it from its
last ``checkpoint.pt``.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plc_monai.atomic_files import atomic_write_text
from plc_monai.experiments import figures as _figures
from plc_monai.experiments.paper_results import METHOD_LABELS, METHOD_TABLE, paper_dice
from plc_monai.experiments.round_models import round_model_path
from plc_monai.experiments.runs import RunSpec, bundle_command, bundle_dataset, bundle_parser, plan_runs

__all__ = ["run_experiment", "experiment", "aggregate", "format_markdown", "evaluate_checkpoint", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("baseline", "self_training", "plc_inter", "plc_intra")
#: proposed-method runs preferred for the figures, in order
_PROPOSED = ("plc_inter", "plc_intra")
_ECHO_MARKERS = ("iteration", "best ", "refresh", "resumed", "round model", "VolumeMetricsWriter")


# ---------------------------------------------------------------------------------------------
# small I/O helpers
# ---------------------------------------------------------------------------------------------


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _write_json_atomic(path: Path, data: Any) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _run_logged(cmd: list[str], log_file: Path, echo: bool, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd``, appending its output to ``log_file`` and echoing progress lines.

    Raises:
        RuntimeError: when the command fails; the message holds the log's last lines and its path.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8", buffering=1) as log:  # line-buffered: `tail -f` works
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-25:]
            message = line.split(" - INFO - ", 1)[-1].rstrip()
            if echo and " - INFO - " in line and not message.startswith(">") and any(m in message for m in _ECHO_MARKERS):
                print("      " + message, flush=True)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"command failed (exit {code}): {' '.join(cmd[:6])} ...\n" + "\n".join(tail) + f"\nfull log: {log_file}")


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------


def evaluate_checkpoint(run: RunSpec, ckpt_file: str | os.PathLike, eval_dir: str | os.PathLike) -> dict[str, Any]:
    """Evaluate ``ckpt_file`` on the run's test split in this process, through ``evaluate.json``.

    The configs (``train.json``, the method file, ``evaluate.json``) and settings are those of the
    command ``python -m monai.bundle run --config_file "[...]" --ckpt_file ... --eval_dir ...``, so the
    numbers are the ones that command writes.

    Returns:
        The ``summary.json`` written to ``eval_dir``.

    Raises:
        FileNotFoundError: when ``ckpt_file`` does not exist.
    """
    if not Path(ckpt_file).is_file():
        raise FileNotFoundError(f"model file {ckpt_file} does not exist.")
    settings = {**run.settings, "ckpt_file": str(ckpt_file), "eval_dir": str(eval_dir)}
    parser = bundle_parser(run.evaluate_files, settings)
    parser.get_parsed_content("validate#evaluator").run()
    return json.loads((Path(eval_dir) / "summary.json").read_text())


def _round_files(run: RunSpec) -> dict[int, Path]:
    found = {}
    k = 0
    while round_model_path(run.ckpt_dir, k).is_file():
        found[k] = round_model_path(run.ckpt_dir, k)
        k += 1
    return found


def _rounds_pending(run: RunSpec) -> list[int]:
    return [k for k in _round_files(run) if not (run.round_eval_dir(k) / "summary.json").is_file()]


def _is_finished(run: RunSpec) -> bool:
    return run.summary_file.is_file() and run.train_marker.is_file() and not _rounds_pending(run)


def _execute(run: RunSpec, python: str, echo: bool, say: Any, env: Mapping[str, str]) -> None:
    """Train (or resume), evaluate the final model, evaluate the round models; each step only if not done."""
    if not run.train_marker.is_file():
        resumed = (run.ckpt_dir / "checkpoint.pt").is_file()
        say("training" + (" (resuming from models/checkpoint.pt)" if resumed else ""))
        start = time.perf_counter()
        cmd = bundle_command(run.config_files, "training", run.settings, python)
        _run_logged(cmd, run.log_dir / "train.log", echo, env)
        _write_json_atomic(run.train_marker, {"seconds": time.perf_counter() - start, "command": cmd})
    if not run.summary_file.is_file():
        say("evaluating models/model.pt on the test split")
        evaluate_checkpoint(run, run.ckpt_dir / "model.pt", run.eval_dir)
    for k in _rounds_pending(run):
        say(f"evaluating round model {k}")
        evaluate_checkpoint(run, round_model_path(run.ckpt_dir, k), run.round_eval_dir(k))


def _collect(run: RunSpec) -> dict[str, Any]:
    """What a finished run contributes to the tables."""
    summary = json.loads(run.summary_file.read_text())
    rounds = {}
    for k in _round_files(run):
        path = run.round_eval_dir(k) / "summary.json"
        if path.is_file():
            rounds[k] = json.loads(path.read_text())["mean_foreground_dice"]["mean"]
    marker = json.loads(run.train_marker.read_text()) if run.train_marker.is_file() else {}
    return {
        "method": run.method,
        "combo": run.combo,
        "run_dir": str(run.run_dir),
        "mean_foreground_dice": summary["mean_foreground_dice"]["mean"],
        "summary": summary,
        "round_dice": rounds,
        "train_seconds": marker.get("seconds"),
        "dropped_overrides": run.dropped,
    }


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and population std (``numpy.std``) over the defined values."""
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return None, None, 0
    return float(np.mean(vals)), float(np.std(vals)), len(vals)


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
        mean, std, n = _mean_std([r["mean_foreground_dice"] for r in runs])
        structures: dict[str, dict[str, Any]] = {}
        names = [s["structure"] for s in runs[0]["summary"]["structures"]]
        for i, name in enumerate(names):
            entry: dict[str, Any] = {}
            for key, field in (("dice", "dice_mean"), ("hd95", "hd95_mm_mean"), ("asd", "asd_mm_mean")):
                m, s, k = _mean_std([r["summary"]["structures"][i][field] for r in runs])
                entry[f"{key}_mean"], entry[f"{key}_std"], entry[f"{key}_n"] = m, s, k
            structures[name] = entry
        round_ids = sorted({k for r in runs for k in r["round_dice"]})
        rounds = {}
        for k in round_ids:
            m, s, c = _mean_std([r["round_dice"].get(k) for r in runs])
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


def _cell(mean: float | None, std: float | None, digits: int = 3) -> str:
    return "n/a" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_markdown(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """The results as Markdown: the main table (like the paper's Table I), per-structure tables, rounds."""
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
    lines += [f"| Method | Dice (this run) | Paper ({dataset}, {setting}) | runs |", "|---|---|---|---|"]
    for r in rows:
        paper = "n/a" if r["paper_dice"] is None else f"{r['paper_dice']:.3f} ({r['paper_table']})"
        lines.append(f"| {r['label']} | {_cell(r['dice_mean'], r['dice_std'])} | {paper} | {r['n_runs']} |")
    if rows:
        names = list(rows[0]["structures"])
        for key, title, digits in (("dice", "Dice per structure", 3), ("hd95", "HD95 per structure (mm)", 2),
                                   ("asd", "ASD per structure (mm)", 2)):
            lines += ["", f"## {title}", "", "| Method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for r in rows:
                cells = [_cell(r["structures"][n][f"{key}_mean"], r["structures"][n][f"{key}_std"], digits) for n in names]
                lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
        with_rounds = [r for r in rows if r["rounds"]]
        if with_rounds:
            max_round = max(max(r["rounds"]) for r in with_rounds)
            lines += ["", "## Test Dice after each pseudo-labeling round (Fig. 4; round 0: the warm-up model)", "",
                      "| Method | " + " | ".join(f"round {k}" for k in range(max_round + 1)) + " |",
                      "|---" * (max_round + 2) + "|"]
            for r in with_rounds:
                cells = [_cell(r["rounds"][k]["mean"], r["rounds"][k]["std"]) if k in r["rounds"] else "n/a"
                         for k in range(max_round + 1)]
                lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    if meta.get("figures"):
        lines += ["", "## Figures", ""] + [f"- `{f}`" for f in meta["figures"]]
    lines += ["", f"Machine: {meta['machine']}. Written {meta['written']}. Wall time of the runs executed by "
              f"the last invocation: {_hms(meta['seconds'])}.", ""]
    return "\n".join(lines)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    names = list(rows[0]["structures"]) if rows else []
    header = ["method", "label", "n_runs", "dice_mean", "dice_std", "paper_dice", "paper_table"]
    for n in names:
        header += [f"{n}_{k}_{s}" for k in ("dice", "hd95", "asd") for s in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for r in rows:
        row = [r["method"], r["label"], r["n_runs"], r["dice_mean"], r["dice_std"], r["paper_dice"], r["paper_table"]]
        for n in names:
            row += [r["structures"][n][f"{k}_{s}"] for k in ("dice", "hd95", "asd") for s in ("mean", "std")]
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def _runs_csv_text(results: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "combo", "mean_foreground_dice", "train_seconds", "round_dice", "run_dir"])
    for r in results:
        rounds = ";".join(f"{k}:{v:.4f}" for k, v in sorted(r["round_dice"].items()))
        writer.writerow([r["method"], r["combo"], r["mean_foreground_dice"], r["train_seconds"] or "", rounds, r["run_dir"]])
    return buffer.getvalue()


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
    if proposed and ("self_training", combo) in by_key:
        path = fig_dir / f"tsne_{combo}.png"
        if want(path):
            _figures.tsne_figure({"self-training": by_key[("self_training", combo)],
                                  f"proposed ({proposed})": by_key[(proposed, combo)]}, path)
        written.append(str(path.relative_to(out)))
    reference = next((m for m in ("baseline", "self_training") if (m, combo) in by_key), None)
    if proposed and reference:
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


def run_experiment(
    bundle: str | os.PathLike,
    setting: str,
    combos: Sequence[str],
    methods: Sequence[str],
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "paper",
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    figures: bool = True,
    python: str | None = None,
    echo: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (method, combo), then write the results table and figures.

    Runs are planned by :func:`plc_monai.experiments.runs.plan_runs` (folders
    ``<output_dir>/runs/<method>/<combo>``, shared cache ``<output_dir>/cache``). For each run, in
    order and only when not already done: ``python -m monai.bundle run training`` with the method
    file merged after ``train.json`` (a subprocess; an interrupted training resumes from its
    checkpoint), then ``evaluate.json`` on ``models/model.pt`` and on the round models
    ``models/model_round_<k>.pt`` (in this process, see :func:`evaluate_checkpoint`). Progress lines say which run (k of N), the elapsed
    time and an ETA from the durations of the runs executed so far.

    Written to ``output_dir``: ``results.md``, ``results.csv`` (one row per method),
    ``runs.csv`` (one row per run), ``results.json`` (everything, with the per-run summaries), and
    ``figures/`` for the first combo, when the runs they need are part of the experiment:
    ``round_dice.png`` (self-training and proposed runs), ``tsne_<combo>.png`` (self-training and
    proposed), ``examples_<combo>.png`` (baseline, or else self-training, and proposed). The proposed
    method is ``plc_inter`` if it ran, else ``plc_intra``. Figures are redrawn when a run was executed.

    Args:
        bundle: the bundle folder, e.g. ``bundles/acdc``.
        setting: ``tr1``, ``tr2``, ``tr8``.
        combos: e.g. ``["c1", "c2", "c3"]``; split seeds for ``split="random"``.
        methods: method names of ``<bundle>/configs/methods``.
        dataset_dir: the dataset folder.
        output_dir: the experiment folder.
        split: ``paper`` or ``random``.
        seed: training seed of every run.
        overrides: bundle ids applied to every run (see :func:`~plc_monai.experiments.runs.plan_runs`).
        device: ``cpu``, ``cuda:0``, ...; ``None`` keeps the bundle's choice.
        cache_dir: preprocessing cache (default ``<output_dir>/cache``).
        figures: write the figures.
        python: the Python interpreter of the subprocesses (default: this one).
        echo: print the runs' progress lines.
        threads: CPU threads of each run (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` of the subprocesses,
            ``torch.set_num_threads`` here); ``None`` keeps the defaults. On a busy CPU machine 1 thread
            avoids OpenMP oversubscription, which can slow training several-fold.

    Returns:
        ``{"meta": ..., "rows": aggregate rows, "runs": per-run records, "files": written paths}``.

    Raises:
        RuntimeError: when a training or evaluation command fails (the message names its log).
    """
    out = Path(output_dir).expanduser().resolve()
    runs = plan_runs(bundle, setting, combos, methods, dataset_dir, out, split=split, seed=seed,
                     overrides=overrides, device=device, cache_dir=cache_dir)
    dataset = bundle_dataset(bundle)
    python = python or sys.executable
    env: dict[str, str] = {}
    if threads is not None:
        import torch

        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}.")
        env = {"OMP_NUM_THREADS": str(int(threads)), "MKL_NUM_THREADS": str(int(threads))}
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    durations: list[float] = []
    executed = 0
    print(f"experiment: {len(runs)} runs ({len(methods)} methods x {len(combos)} combos) of {dataset} {setting}, "
          f"split {split}, into {out}", flush=True)
    for i, run in enumerate(runs, 1):
        def say(message: str, i: int = i, run: RunSpec = run) -> None:
            elapsed = time.perf_counter() - start
            remaining = len(runs) - i + 1
            eta = _hms(float(np.mean(durations)) * remaining) if durations else "unknown"
            print(f"[{i}/{len(runs)}] {run.name}: {message} | elapsed {_hms(elapsed)} | ETA {eta}", flush=True)

        if _is_finished(run):
            say("finished earlier (eval/summary.json exists), skipped")
            continue
        t0 = time.perf_counter()
        _execute(run, python, echo, say, env)
        durations.append(time.perf_counter() - t0)
        executed += 1
        dice = json.loads(run.summary_file.read_text())["mean_foreground_dice"]["mean"]
        say(f"done in {_hms(durations[-1])}, test mean foreground Dice {dice if dice is None else round(dice, 4)}")
    results = [_collect(r) for r in runs]
    rows = aggregate(results, list(methods), dataset, setting)
    fig_files = _make_figures(runs, results, out, refresh=executed > 0) if figures else []
    meta = {
        "bundle": str(Path(bundle).resolve()),
        "dataset": dataset,
        "setting": setting,
        "split": split,
        "combos": [str(c) for c in combos],
        "methods": list(methods),
        "seed": seed,
        "overrides": dict(overrides or {}),
        "device": device,
        "threads": threads,
        "n_runs": len(runs),
        "executed_runs": executed,
        "seconds": time.perf_counter() - start,
        "machine": _machine(),
        "written": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "figures": fig_files,
    }
    files = {"markdown": out / "results.md", "csv": out / "results.csv", "runs_csv": out / "runs.csv",
             "json": out / "results.json"}
    _write_text_atomic(files["markdown"], format_markdown(rows, meta))
    _write_text_atomic(files["csv"], _csv_text(rows))
    _write_text_atomic(files["runs_csv"], _runs_csv_text(results))
    _write_json_atomic(files["json"], {"meta": meta, "rows": rows, "runs": results})
    print(format_markdown(rows, meta), flush=True)
    return {"meta": meta, "rows": rows, "runs": results, "files": {k: str(v) for k, v in files.items()}}


def _as_list(value: str | Sequence[Any] | int) -> list[str]:
    """``"a,b"``, ``("a", "b")`` (how fire passes ``a,b``) or ``3`` -> ``["a", "b"]`` / ``["3"]``."""
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


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
    **overrides: Any,
) -> dict[str, Any]:
    """Command-line form of :func:`run_experiment`: comma-separated ``combos``/``methods``, bundle ids as flags.

    Example::

        python -m plc_monai experiment --bundle bundles/acdc --setting tr1 --combos c1,c2,c3 \\
            --methods baseline,self_training,plc_inter,plc_intra --dataset_dir /data/ACDC/training --output_dir OUT

    Any further ``--<id> <value>`` is a bundle override for every run (e.g. ``--lambda_cont 1.0``);
    ids that a method file sets itself are not overridden for that method.

    Raises:
        ValueError: when ``dataset_dir`` is missing.
    """
    if dataset_dir is None:
        raise ValueError("--dataset_dir is required: the dataset folder the bundle reads.")
    return run_experiment(
        bundle, str(setting), _as_list(combos), _as_list(methods), dataset_dir, output_dir, split=split,
        seed=int(seed), overrides=overrides, device=device, cache_dir=cache_dir, figures=bool(figures),
        threads=threads,
    )
