"""Run many experiment runs at once: local slots (subprocesses on one machine) or a Slurm job array (submitit).

Every run is executed by :func:`plc_monai.experiments.worker.execute_run` in a process of its own:
:func:`run_local` starts up to ``parallel`` worker processes here (:func:`run_slots`), :func:`run_submitit`
submits one job array. :class:`Progress` prints runs done / running / failed and an ETA for the whole table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from plc_monai.experiments.runs import RunSpec
from plc_monai.experiments.worker import RunJob, thread_env
from plc_monai.reports import format_duration, write_json

__all__ = [
    "EXECUTORS", "LaunchOptions", "RunOutcome", "SlotTask", "Progress", "available_cpus", "run_slots", "run_local",
    "run_submitit", "submitit_parameters", "import_submitit",
]

#: ``local``: subprocess slots on this machine; ``slurm``: a Slurm job array through submitit;
#: ``submitit_local``: the submitit job path run by submitit's local executor (testing without a cluster)
EXECUTORS = ("local", "slurm", "submitit_local")
#: lines of a failed run's log quoted when it fails
FAILURE_TAIL_LINES = 12


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _at_least(name: str, value: Any, minimum: float) -> None:
    if value is not None and (isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}.")


@dataclass
class LaunchOptions:
    """How the runs of an experiment are executed (what they compute is the :class:`~plc_monai.experiments.runs.ExperimentSpec`).

    Args:
        executor: ``local`` (subprocess slots here), ``slurm`` (a job array through submitit, from
            ``pip install plc_monai[cluster]``) or ``submitit_local`` (the submitit job path on this machine).
        parallel: runs at once in local slots (``local`` only; Slurm uses ``array_parallelism``).
        devices: GPU ids to spread the local slots over (``CUDA_VISIBLE_DEVICES`` per run, the least busy);
            empty: every run sees the GPUs the harness sees.
        threads: CPU threads per run; ``None``: the defaults with one slot, the cores split evenly between
            several slots, ``cpus_per_job`` on Slurm.
        partition: Slurm partition (``None``, like ``cpus_per_job`` and ``mem_gb``: the cluster's default).
        time_limit_min: time limit of each job in minutes (a job stopped at it is requeued and resumes).
        gpus_per_job: GPUs of each job; ``None``: 0 for ``--device cpu``, else 1.
        cpus_per_job: CPU cores of each job.
        mem_gb: memory of each job in GB.
        array_parallelism: jobs of the array running at once (``None``: all).
        wait: wait for the Slurm jobs and write the tables; ``False`` submits and returns (then ``--collect``).
        python: interpreter of the worker and training processes (default: this one).
        echo: relay the trainers' progress lines.
        status_interval: seconds between status lines while nothing else is printed.
        poll_seconds: how often the launcher looks at its runs (``None``: 0.5 s locally, 30 s on Slurm).

    Raises:
        ValueError: an unknown executor, a value below its minimum, ``parallel``/``devices`` with a submitit
            executor, or a malformed device id.
    """

    executor: str = "local"
    parallel: int = 1
    devices: Sequence[str] = ()
    threads: int | None = None
    partition: str | None = None
    time_limit_min: int = 720
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    wait: bool = True
    python: str | None = None
    echo: bool = True
    status_interval: float = 60.0
    poll_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}.")
        for name, minimum in (("parallel", 1), ("threads", 1), ("time_limit_min", 1), ("gpus_per_job", 0),
                              ("cpus_per_job", 1), ("array_parallelism", 1), ("mem_gb", 0.001),
                              ("status_interval", 0.001), ("poll_seconds", 0.001)):
            _at_least(name, getattr(self, name), minimum)
        self.devices = tuple(str(d).strip() for d in self.devices)
        if any(not d or "," in d for d in self.devices):
            raise ValueError(f"devices must be GPU ids such as ('0', '1'), got {list(self.devices)!r}.")
        if self.executor != "local" and (self.parallel != 1 or self.devices):
            raise ValueError(f"parallel={self.parallel} and devices={list(self.devices)} are for the local slots; "
                             f"with executor {self.executor!r} use array_parallelism and gpus_per_job (the scheduler "
                             "assigns the GPUs).")

    def threads_per_run(self) -> int | None:
        """CPU threads each run gets (see ``threads``)."""
        if self.threads is not None:
            return int(self.threads)
        if self.executor != "local":
            return self.cpus_per_job
        return max(1, available_cpus() // self.parallel) if self.parallel > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "devices": list(self.devices)}


@dataclass
class RunOutcome:
    """What became of a run in this invocation.

    Attributes:
        name: ``method/combo``.
        status: ``done``, ``failed``, ``submitted`` (Slurm, not waited for) or ``unfinished`` (``--collect``).
        seconds: wall time of the run's process (``None`` when it did not end here).
        log_file: the log to read about it.
        tail: the log's last lines when it failed.
    """

    name: str
    status: str
    seconds: float | None = None
    log_file: Path | None = None
    tail: str = ""


@dataclass
class SlotTask:
    """A command for a local slot: its name, argv and the log its output is appended to."""

    name: str
    argv: list[str]
    log_file: Path


class Progress:
    """Progress of the whole table: ``[3/10 done, 2 running, 1 failed | elapsed 0:12:00 | ETA 0:20:00] name: message``.

    Args:
        total: runs of the experiment.
        done: runs already finished before this invocation.
        slots: runs executed at once.
        status_interval: seconds between status lines when nothing else was printed.
    """

    def __init__(self, total: int, done: int = 0, slots: int = 1, status_interval: float = 60.0) -> None:
        self.total = int(total)
        self.done = int(done)
        self.failed = 0
        self.slots = max(1, int(slots))
        self.status_interval = float(status_interval)
        self.durations: list[float] = []
        self.started: dict[str, float] = {}
        self.start = time.perf_counter()
        self._last_print = self.start

    @property
    def running(self) -> int:
        return len(self.started)

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed - self.running

    def eta_seconds(self) -> float | None:
        """Mean duration of the runs finished here times the runs waiting, plus what that mean leaves of the
        running ones, shared over the busy slots; ``None`` before a run has finished here."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.perf_counter()
        work = self.pending * mean + sum(max(mean - (now - t0), 0.0) for t0 in self.started.values())
        busy = max(1, min(self.slots, self.pending + self.running))
        return work / busy

    def status(self) -> str:
        eta = self.eta_seconds()
        return (f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed | elapsed "
                f"{format_duration(time.perf_counter() - self.start)} | ETA "
                f"{'unknown' if eta is None else format_duration(eta)}")

    def say(self, name: str, message: str) -> None:
        """Print ``[status] name: message``."""
        print(f"[{self.status()}] {name}: {message}", flush=True)
        self._last_print = time.perf_counter()

    def run_started(self, name: str, message: str = "started") -> None:
        self.started.setdefault(name, time.perf_counter())
        self.say(name, message)

    def run_finished(self, name: str, seconds: float | None = None, message: str = "") -> None:
        t0 = self.started.pop(name, None)
        if seconds is None and t0 is not None:
            seconds = time.perf_counter() - t0
        if seconds is not None:
            self.durations.append(float(seconds))
        self.done += 1
        took = "" if seconds is None else f" in {format_duration(seconds)}"
        self.say(name, f"finished{took}" + (f", {message}" if message else ""))

    def run_failed(self, name: str, message: str, tail: str = "") -> None:
        """Report a failed run, with the last lines of its log (``tail``) quoted below ``message``."""
        self.started.pop(name, None)
        self.failed += 1
        self.say(name, "FAILED: " + message + "".join("\n    > " + line for line in tail.splitlines()))

    def tick(self) -> None:
        """Print a status line when nothing was printed for ``status_interval`` seconds."""
        if time.perf_counter() - self._last_print >= self.status_interval:
            self.say("experiment", "status")


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-FAILURE_TAIL_LINES:])


@dataclass
class _Slot:
    task: SlotTask
    proc: subprocess.Popen
    log: IO[bytes]
    started: float
    first_byte: int
    read_pos: int
    device: str | None
    partial: bytes = b""


def _relay_new_lines(slot: _Slot) -> None:
    """Print, indented and named, the complete lines the slot's process appended to its log since the last call."""
    with open(slot.task.log_file, "rb") as f:
        f.seek(slot.read_pos)
        data = f.read()
    slot.read_pos += len(data)
    *lines, slot.partial = (slot.partial + data).split(b"\n")
    for line in lines:
        print(f"    {slot.task.name} | {line.decode('utf-8', 'replace').rstrip()}", flush=True)


def _stop(slots: Sequence[_Slot], grace_seconds: float = 15.0) -> None:
    """SIGINT to each slot's process group (worker and training), SIGKILL to what is left after the grace time."""
    for slot in slots:
        if slot.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(slot.proc.pid, signal.SIGINT)
    deadline = time.perf_counter() + grace_seconds
    for slot in slots:
        try:
            slot.proc.wait(timeout=max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(slot.proc.pid, signal.SIGKILL)
            slot.proc.wait()
        slot.log.close()


def run_slots(
    tasks: Sequence[SlotTask],
    progress: Progress,
    parallel: int = 1,
    devices: Sequence[str] = (),
    threads: int | None = None,
    poll_seconds: float = 0.5,
) -> dict[str, RunOutcome]:
    """Run ``tasks`` as subprocesses, at most ``parallel`` at once, each appending its output to its log.

    Each process runs in a session of its own: on an interrupt or an error here, each running task's process
    group gets SIGINT, and SIGKILL 15 s later. A task that exits non-zero is reported (exit status and the last
    lines of its log) and the others go on.

    Args:
        tasks: the commands, in launch order.
        progress: where starts, ends, failures and status lines are printed (the tasks' lines are relayed to stdout).
        parallel: tasks at once.
        devices: GPU ids to spread the tasks over (``CUDA_VISIBLE_DEVICES``: the one with the fewest tasks).
        threads: CPU threads per task (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``); ``None``: unchanged.
        poll_seconds: how often the processes and logs are looked at.

    Returns:
        ``{name: RunOutcome}`` with status ``done`` or ``failed``.

    Raises:
        ValueError: when ``parallel`` is below 1 or two tasks have the same name.
    """
    _at_least("parallel", parallel, 1)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}.")
    pending = deque(tasks)
    running: dict[str, _Slot] = {}
    outcomes: dict[str, RunOutcome] = {}
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1", **thread_env(threads)}
    try:
        while pending or running:
            while pending and len(running) < parallel:
                task = pending.popleft()
                device = min(devices, key=lambda d: sum(s.device == d for s in running.values())) if devices else None
                env = dict(base_env) if device is None else {**base_env, "CUDA_VISIBLE_DEVICES": device}
                task.log_file.parent.mkdir(parents=True, exist_ok=True)
                log = open(task.log_file, "ab")
                log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(task.argv)}\n".encode())
                log.flush()
                first_byte = log.tell()
                proc = subprocess.Popen(task.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
                running[task.name] = _Slot(task, proc, log, time.perf_counter(), first_byte, first_byte, device)
                where = [f"threads {threads}"] if threads is not None else []
                where += [f"CUDA_VISIBLE_DEVICES={device}"] if device is not None else []
                progress.run_started(task.name, "started" + (f" ({', '.join(where)})" if where else ""))
            time.sleep(poll_seconds)
            for name, slot in list(running.items()):
                code = slot.proc.poll()
                _relay_new_lines(slot)
                if code is None:
                    continue
                slot.log.close()
                del running[name]
                seconds = time.perf_counter() - slot.started
                if code == 0:
                    outcomes[name] = RunOutcome(name, "done", seconds, slot.task.log_file)
                    progress.run_finished(name, seconds)
                else:
                    tail = _tail(slot.task.log_file.read_bytes()[slot.first_byte :].decode("utf-8", "replace"))
                    outcomes[name] = RunOutcome(name, "failed", seconds, slot.task.log_file, tail)
                    progress.run_failed(name, f"exit status {code}; last lines of {slot.task.log_file}:", tail)
            progress.tick()
    except BaseException:
        _stop(list(running.values()))
        raise
    return outcomes


def run_local(runs: Sequence[RunSpec], options: LaunchOptions, progress: Progress) -> dict[str, RunOutcome]:
    """Execute ``runs`` in local slots: ``python -m plc_monai.experiments.worker <run.json>`` per run,
    its output in ``logs/worker.log``."""
    python = options.python or sys.executable
    threads = options.threads_per_run()
    tasks = []
    for run in runs:
        write_json(run.run_file, run.to_dict())
        argv = [python, "-m", "plc_monai.experiments.worker", str(run.run_file), "--python", python]
        argv += ["--threads", str(threads)] if threads is not None else []
        argv += [] if options.echo else ["--quiet"]
        tasks.append(SlotTask(run.name, argv, run.log_dir / "worker.log"))
    return run_slots(tasks, progress, options.parallel, options.devices, threads, options.poll_seconds or 0.5)


def import_submitit() -> Any:
    """The ``submitit`` module; an :class:`ImportError` saying how to install it when it is missing."""
    try:
        import submitit
    except ImportError as err:
        raise ImportError("the slurm and submitit_local executors need submitit: pip install submitit "
                          "(or pip install -e '.[cluster]' in a plc_monai checkout).") from err
    return submitit


def submitit_parameters(options: LaunchOptions, num_runs: int, cpu_only: bool) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` of a job array of ``num_runs`` jobs (``None``: the cluster's defaults;
    ``gpus_per_job`` defaults to 0 when ``cpu_only``, else 1)."""
    gpus = options.gpus_per_job if options.gpus_per_job is not None else (0 if cpu_only else 1)
    return {"name": "plc_monai", "timeout_min": int(options.time_limit_min), "gpus_per_node": int(gpus),
            "cpus_per_task": options.cpus_per_job, "mem_gb": options.mem_gb, "slurm_partition": options.partition,
            "slurm_array_parallelism": int(options.array_parallelism or max(1, num_runs))}


def run_submitit(
    runs: Sequence[RunSpec], options: LaunchOptions, folder: Path, progress: Progress, cpu_only: bool
) -> dict[str, RunOutcome]:
    """Submit ``runs`` as one job array (one :class:`~plc_monai.experiments.worker.RunJob` each) and wait for it.

    Job files and logs go to ``folder`` (``jobs.json`` maps run names to job ids). With ``options.wait`` false,
    returns after the submission (status ``submitted``). An interrupt while waiting leaves Slurm jobs running.

    Raises:
        ImportError: when submitit is missing.
        RuntimeError: ``executor='slurm'`` on a machine without Slurm.
    """
    submitit = import_submitit()
    cluster = "slurm" if options.executor == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as err:
        raise RuntimeError(f"executor 'slurm' needs Slurm's commands on this machine ({err}); run the command on "
                           "the cluster's login node, or use --executor local.") from err
    executor.update_parameters(**submitit_parameters(options, len(runs), cpu_only))
    for run in runs:
        write_json(run.run_file, run.to_dict())
    jobs = executor.map_array(RunJob(options.python, options.threads_per_run(), options.echo), [r.to_dict() for r in runs])
    write_json(folder / "jobs.json", {r.name: j.job_id for r, j in zip(runs, jobs)})
    for run, job in zip(runs, jobs):
        progress.say(run.name, f"submitted as job {job.job_id} ({cluster}); log {job.paths.stdout}")
    if not options.wait:
        return {r.name: RunOutcome(r.name, "submitted", log_file=j.paths.stdout) for r, j in zip(runs, jobs)}
    poll = options.poll_seconds or (30.0 if cluster == "slurm" else 0.5)
    active = dict(zip((r.name for r in runs), jobs))
    outcomes: dict[str, RunOutcome] = {}
    try:
        while active:
            for name, job in list(active.items()):
                if job.done():
                    del active[name]
                    try:
                        result = job.result()
                    except Exception as err:  # the job's traceback, from its log
                        tail = _tail(str(err))
                        outcomes[name] = RunOutcome(name, "failed", None, job.paths.stdout, tail)
                        progress.run_failed(name, f"job {job.job_id}; log {job.paths.stdout}; last lines:", tail)
                    else:
                        outcomes[name] = RunOutcome(name, "done", result.get("seconds"), job.paths.stdout)
                        progress.run_finished(name, result.get("seconds"), f"test mean foreground Dice {result.get('mean_foreground_dice')}")
                elif name not in progress.started and job.state.upper() == "RUNNING":
                    progress.run_started(name, f"job {job.job_id} running")
            progress.tick()
            if active:
                time.sleep(poll)
    except KeyboardInterrupt:
        if cluster == "slurm":
            print(f"interrupted: the Slurm jobs {sorted(set(j.job_id.split('_')[0] for j in active.values()))} keep "
                  "running; build the tables later with: python -m plc_monai experiment --collect --output_dir ...",
                  flush=True)
        raise
    return outcomes

