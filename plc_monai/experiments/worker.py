"""One run of an experiment from start to end, in its own process: train through the bundle, then evaluate.

Each step runs only when its output is missing, so calling it again finishes what is left. It runs as
``python -m plc_monai.experiments.worker <run_dir>/run.json`` (a local slot) or as a submitit :class:`RunJob`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from plc_monai.experiments.round_models import round_model_path
from plc_monai.experiments.runs import RunSpec, bundle_command, bundle_parser
from plc_monai.reports import write_json

__all__ = ["execute_run", "evaluate_checkpoint", "run_logged", "thread_env", "RunJob", "main"]

#: trainer log messages echoed while a training runs (the rest stays in ``logs/train.log``)
ECHO_MARKERS = ("iteration", "best ", "refresh", "resumed", "round model", "VolumeMetricsWriter")
#: lines of a failed command's output quoted in its error
TAIL_LINES = 25


def thread_env(threads: int | None) -> dict[str, str]:
    """``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for ``threads`` CPU threads (``{}`` for ``None``); ValueError below 1."""
    if threads is None:
        return {}
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    return {"OMP_NUM_THREADS": str(int(threads)), "MKL_NUM_THREADS": str(int(threads))}


def run_logged(cmd: Sequence[str], log_file: Path, echo: bool, env: Mapping[str, str] | None = None) -> None:
    """Run ``cmd``, appending its output to ``log_file`` and printing its progress lines when ``echo``.

    Raises:
        RuntimeError: when the command fails; the message holds the log's last lines and its path.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a", encoding="utf-8", buffering=1) as log:  # line-buffered: `tail -f` works
        log.write(f"\n$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        tail: list[str] = []
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-TAIL_LINES:]
            message = line.split(" - INFO - ", 1)[-1].rstrip()
            if echo and " - INFO - " in line and not message.startswith(">") and any(m in message for m in ECHO_MARKERS):
                print("  " + message, flush=True)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"command failed (exit {code}): {' '.join(cmd[:6])} ...\n" + "\n".join(tail) + f"\nfull log: {log_file}")


def evaluate_checkpoint(run: RunSpec, ckpt_file: str | os.PathLike, eval_dir: str | os.PathLike) -> dict[str, Any]:
    """Evaluate ``ckpt_file`` on the run's test split in this process, with the configs and settings of
    ``python -m monai.bundle run --config_file "[..., evaluate.json]" --ckpt_file ... --eval_dir ...``.

    Returns:
        The ``summary.json`` written to ``eval_dir``.

    Raises:
        FileNotFoundError: when ``ckpt_file`` does not exist.
    """
    if not Path(ckpt_file).is_file():
        raise FileNotFoundError(f"model file {ckpt_file} does not exist.")
    files = [*run.config_files, run.config_files[0].parent / "evaluate.json"]
    settings = {**run.settings, "ckpt_file": str(ckpt_file), "eval_dir": str(eval_dir)}
    bundle_parser(files, settings).get_parsed_content("validate#evaluator").run()
    return json.loads((Path(eval_dir) / "summary.json").read_text())


def execute_run(
    run: RunSpec,
    python: str | None = None,
    echo: bool = True,
    threads: int | None = None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume), evaluate the final model, evaluate the round models; each step only if not done.

    Args:
        run: the run.
        python: interpreter of the training subprocess (default: this one).
        echo: print the trainer's progress lines.
        threads: CPU threads of the training (:func:`thread_env`) and of the evaluation here; ``None``: defaults.
        say: where the step messages go (default: ``print``).

    Returns:
        ``{"run": name, "seconds": wall time of this call, "mean_foreground_dice": test Dice}``.

    Raises:
        RuntimeError: when the training command fails (the message quotes its log).
        FileNotFoundError: when the training left no ``models/model.pt``.
    """
    say = say or (lambda message: print(message, flush=True))
    env = thread_env(threads)
    if threads is not None:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    if not run.train_marker.is_file():
        resumed = (run.ckpt_dir / "checkpoint.pt").is_file()
        say("training" + (" (resuming from models/checkpoint.pt)" if resumed else ""))
        cmd = bundle_command(run.config_files, "training", run.settings, python)
        run_logged(cmd, run.log_dir / "train.log", echo, env)
        write_json(run.train_marker, {"seconds": time.perf_counter() - start, "command": cmd, "threads": threads,
                                      "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                      "host": socket.gethostname()})
    if not run.summary_file.is_file():
        say("evaluating models/model.pt on the test split")
        evaluate_checkpoint(run, run.ckpt_dir / "model.pt", run.eval_dir)
    for k in run.rounds_pending():
        say(f"evaluating round model {k}")
        evaluate_checkpoint(run, round_model_path(run.ckpt_dir, k), run.round_eval_dir(k))
    dice = json.loads(run.summary_file.read_text())["mean_foreground_dice"]["mean"]
    seconds = time.perf_counter() - start
    say(f"done in {seconds:.0f} s, test mean foreground Dice {dice if dice is None else round(dice, 4)}")
    return {"run": run.name, "seconds": seconds, "mean_foreground_dice": dice}


class RunJob:
    """A run as a submitit job: ``RunJob(threads=4)(run.to_dict())`` calls :func:`execute_run` on the node.

    At a Slurm time-out submitit calls :meth:`checkpoint`, which requeues the same call (the run resumes).

    Args:
        python: interpreter of the training subprocess (default: the job's).
        threads: CPU threads of the run (see :func:`execute_run`).
        echo: print the trainer's progress lines into the job's log.
    """

    def __init__(self, python: str | None = None, threads: int | None = None, echo: bool = True) -> None:
        thread_env(threads)  # checks the value now, not on the node
        self.python = python
        self.threads = threads
        self.echo = echo

    def __call__(self, run: Mapping[str, Any]) -> dict[str, Any]:
        spec = RunSpec.from_dict(run)
        return execute_run(spec, self.python, self.echo, self.threads, say=lambda m: print(f"{spec.name}: {m}", flush=True))

    def checkpoint(self, run: Mapping[str, Any]) -> Any:
        """Requeue the same call (submitit's hook at a Slurm time-out or preemption)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, run)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m plc_monai.experiments.worker RUN_JSON [--threads N] [--python P] [--quiet]``: 0 when the run
    finished, 1 when it failed (the traceback is printed)."""
    parser = argparse.ArgumentParser(prog="python -m plc_monai.experiments.worker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_file", help="the run's run.json (RunSpec.to_dict)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the run")
    parser.add_argument("--python", default=None, help="interpreter of the training subprocess")
    parser.add_argument("--quiet", action="store_true", help="do not print the trainer's progress lines")
    args = parser.parse_args(argv)
    print(f"worker pid {os.getpid()} on {socket.gethostname()}, run file {args.run_file}", flush=True)
    try:
        run = RunSpec.from_dict(json.loads(Path(args.run_file).read_text()))
        execute_run(run, args.python, not args.quiet, args.threads)
    except Exception:  # the launcher reports the last lines of this output
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
