"""Experiment harness, part 2: split folders, the command line, local slots, submitit (local and Slurm), --collect."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from plc_monai.data.phantom import write_phantom_dataset
from plc_monai.data.splits import Split, save_split
from plc_monai.experiments.harness import UnfinishedRunsError, collect_experiment, experiment, run_experiment
from plc_monai.experiments.launch import (
    LaunchOptions,
    Progress,
    SlotTask,
    available_cpus,
    import_submitit,
    run_slots,
    submitit_parameters,
)
from plc_monai.experiments.runs import ExperimentSpec, bundle_parser, plan_runs
from plc_monai.experiments.worker import RunJob
from test_experiments import BUNDLES, REPO, TINY  # noqa: E402

ACDC = BUNDLES["acdc"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom_acdc_launch")
    write_phantom_dataset("acdc", root, num_subjects=8, seed=0, image_size=(64, 64), num_slices=6)
    return root / "training"


def _phantom_ids(phantom: Path) -> list[str]:
    from plc_monai.data.readers import read_datalist

    return [e["id"] for e in read_datalist("acdc", phantom, validate=False)]


def _split_folder(phantom: Path, folder: Path, combos: dict[str, int]) -> Path:
    """``tr1_<combo>.json`` files, each labeling the phantom volume of the given index."""
    ids = _phantom_ids(phantom)
    for combo, k in combos.items():
        rest = [i for i in ids if i != ids[k]]
        save_split(Split(labeled=[ids[k]], validation=rest[:2], unlabeled=rest[2:5], test=rest[5:], source="test"),
                   folder / f"tr1_{combo}.json")
    return folder


def _quiet_plan(spec: ExperimentSpec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return plan_runs(spec)


# --------------------------------------------------------------------------------------------
# split files
# --------------------------------------------------------------------------------------------


def test_split_folder_gives_each_run_its_file(phantom, tmp_path):
    folder = _split_folder(phantom, tmp_path / "splits", {"c1": 0, "c2": 3})
    spec = ExperimentSpec(ACDC, "tr1", ["c1", "c2"], ["baseline", "plc_inter"], phantom, tmp_path / "out",
                          split=folder, overrides=TINY, device="cpu")
    runs = _quiet_plan(spec)
    assert [(r.name, Path(r.settings["split"]).name) for r in runs] == [
        ("baseline/c1", "tr1_c1.json"), ("baseline/c2", "tr1_c2.json"),
        ("plc_inter/c1", "tr1_c1.json"), ("plc_inter/c2", "tr1_c2.json")]
    assert all(Path(r.settings["split"]).parent == folder.resolve() and r.settings["combo"] == r.combo for r in runs)
    assert "split_seed" not in runs[0].settings
    # the bundle reads the file: its labeled volume is the one the file names
    ids = _phantom_ids(phantom)
    data = bundle_parser(runs[1].config_files, runs[1].settings).get_parsed_content("data")
    assert [e["id"] for e in data["labeled"]] == [ids[3]]
    assert ExperimentSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec

    with pytest.raises(FileNotFoundError, match=r"lacks \['tr1_c3.json'\].*it has: \['tr1_c1.json', 'tr1_c2.json'\]"):
        ExperimentSpec(ACDC, "tr1", ["c1", "c3"], ["baseline"], phantom, tmp_path / "out", split=folder)
    with pytest.raises(FileNotFoundError, match="tr2_c1.json"):
        ExperimentSpec(ACDC, "tr2", ["c1"], ["baseline"], phantom, tmp_path / "out", split=folder)
    one = ExperimentSpec(ACDC, "tr1", ["c2"], ["baseline"], phantom, tmp_path / "out", split=folder / "tr1_c2.json")
    assert _quiet_plan(one)[0].settings["split"] == str((folder / "tr1_c2.json").resolve())
    with pytest.raises(ValueError, match="same volumes"):
        ExperimentSpec(ACDC, "tr1", ["c1", "c2"], ["baseline"], phantom, tmp_path / "out", split=folder / "tr1_c1.json")
    (folder / "tr1_c9.json").write_text('{"labeled": []}')
    with pytest.raises(ValueError, match="tr1_c9.json: not a valid split file"):
        ExperimentSpec(ACDC, "tr1", ["c9"], ["baseline"], phantom, tmp_path / "out", split=folder)
    with pytest.raises(ValueError, match="'nonsense' is none of these"):
        ExperimentSpec(ACDC, "tr1", ["c1"], ["baseline"], phantom, tmp_path / "out", split="nonsense")


def test_experiment_help_prints_and_runs_nothing(tmp_path, monkeypatch):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "plc_monai", "experiment", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for text in ("plc_monai experiment", "--parallel", "--executor", "--split", "--collect"):
        assert text in proc.stdout, text
    assert list(tmp_path.iterdir()) == []  # no experiment folder, nothing run
    # `-h` reaches the function as h=True (fire): the same help
    monkeypatch.chdir(tmp_path)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert experiment(h=True) is None
    assert buffer.getvalue().strip() == proc.stdout.strip() and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# local slots
# --------------------------------------------------------------------------------------------

_TASK = """
import json, os, sys, time
start = time.time()
time.sleep(0.8)
print("hello from", sys.argv[1], flush=True)
json.dump({"start": start, "end": time.time(), "omp": os.environ.get("OMP_NUM_THREADS"),
           "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}, open(sys.argv[2], "w"))
if sys.argv[1] == "bad":
    print("boom: something broke", flush=True)
    sys.exit(3)
"""


def test_run_slots_parallel_env_devices_and_failure(tmp_path):
    script = tmp_path / "task.py"
    script.write_text(_TASK)
    names = ["a", "bad", "c", "d"]
    tasks = [SlotTask(n, [sys.executable, str(script), n, str(tmp_path / f"{n}.json")], tmp_path / n / "log.txt")
             for n in names]
    progress = Progress(len(tasks), slots=2, status_interval=1e9)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        outcomes = run_slots(tasks, progress, parallel=2, devices=("0", "1"), threads=1, poll_seconds=0.05)
    log = buffer.getvalue()
    assert {n: o.status for n, o in outcomes.items()} == {"a": "done", "bad": "failed", "c": "done", "d": "done"}
    assert "boom: something broke" in outcomes["bad"].tail and outcomes["bad"].log_file == tmp_path / "bad" / "log.txt"
    assert re.search(r"\] bad: FAILED: exit status 3; last lines of .*log.txt:\n    > hello from bad\n    > boom: something broke\n", log)
    assert "    a | hello from a" in log  # the task's own output, relayed and named
    assert re.search(r"\[3/4 done, 0 running, 1 failed .*\] d: finished", log)
    records = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in names}
    assert {r["omp"] for r in records.values()} == {"1"}
    assert {r["cuda"] for r in records.values()} <= {"0", "1"}
    # never more than 2 at once, and the first two ran side by side on different GPUs
    events = sorted([(r["start"], 1) for r in records.values()] + [(r["end"], -1) for r in records.values()])
    running = [sum(e for _, e in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2
    assert records["a"]["start"] < records["bad"]["end"] and records["bad"]["start"] < records["a"]["end"]
    assert records["a"]["cuda"] != records["bad"]["cuda"]
    # each log holds its own command's output, appended
    assert "hello from c" in (tmp_path / "c" / "log.txt").read_text()


def test_progress_eta_and_launch_options():
    progress = Progress(total=5, done=1, slots=2)
    assert progress.eta_seconds() is None and "ETA unknown" in progress.status()
    progress.started["x"] = time.perf_counter() - 30.0
    progress.run_finished("x", seconds=10.0)
    progress.started["y"] = time.perf_counter()
    # mean 10 s; 2 waiting + up to 10 s left of the running one, over 2 slots
    assert progress.eta_seconds() == pytest.approx((2 * 10 + 10) / 2, abs=0.5)
    assert progress.status().startswith("2/5 done, 1 running, 0 failed")
    assert LaunchOptions(parallel=2).threads_per_run() == max(1, available_cpus() // 2)
    assert LaunchOptions().threads_per_run() is None and LaunchOptions(parallel=3, threads=2).threads_per_run() == 2
    assert LaunchOptions(executor="slurm", cpus_per_job=6).threads_per_run() == 6
    assert LaunchOptions(devices=[0, " 1"]).devices == ("0", "1")
    with pytest.raises(ValueError, match="parallel must be a number >= 1, got 0"):
        LaunchOptions(parallel=0)
    with pytest.raises(ValueError, match="executor must be one of"):
        LaunchOptions(executor="kubernetes")
    with pytest.raises(ValueError, match="array_parallelism"):
        LaunchOptions(executor="slurm", parallel=2)
    with pytest.raises(ValueError, match="GPU ids"):
        LaunchOptions(devices=["0,1"])
    params = submitit_parameters(LaunchOptions(executor="slurm", partition="gpu", time_limit_min=90), 10, cpu_only=False)
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 90
    assert params["gpus_per_node"] == 1 and params["slurm_array_parallelism"] == 10
    assert submitit_parameters(LaunchOptions(executor="slurm"), 3, cpu_only=True)["gpus_per_node"] == 0


def test_devices_need_the_default_cuda_device(phantom, tmp_path):
    spec = ExperimentSpec(ACDC, "tr1", ["c1"], ["baseline"], phantom, tmp_path, split="random", device="cuda:1")
    with pytest.raises(ValueError, match="device must be None, 'cuda' or 'cuda:0', got 'cuda:1'"):
        run_experiment(spec, LaunchOptions(devices=("0", "1")))


@pytest.mark.slow
def test_parallel_runs_failure_is_reported_others_go_on_and_resume(phantom, tmp_path):
    """Two slots: the baseline trains while a broken method fails; tables, exit, and a second invocation."""
    bundle = tmp_path / "bundle"
    shutil.copytree(ACDC / "configs", bundle / "configs")
    (bundle / "configs" / "methods" / "broken.json").write_text(
        json.dumps({"scheme": "broken", "num_rounds": "$int('not a number')"}))
    out = tmp_path / "experiment"
    spec = ExperimentSpec(bundle, "tr1", ["c1"], ["baseline", "broken"], phantom, out, split="random",
                          overrides=TINY, device="cpu")
    launch = LaunchOptions(parallel=2)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(UnfinishedRunsError) as failure:
        run_experiment(spec, launch)
    log = buffer.getvalue()
    assert list(failure.value.runs) == ["broken/c1"] and "1 of 2 runs are not in the tables" in str(failure.value)
    assert re.search(r"broken/c1: FAILED: exit status 1; last lines of .*worker.log:\n(    > .*\n)*    > .*not a number", log)
    assert re.search(r"\[0/2 done, 2 running, 0 failed .*\] broken/c1: started", log)  # side by side
    assert re.search(r"\[1/2 done, 0 running, 1 failed .*\] baseline/c1: finished", log)
    table = (out / "results.md").read_text()
    assert "| Baseline (random init.) |" in table and "| 1 |" in table
    assert "## Runs not in the tables (1 of 2)" in table and "| broken/c1 | failed |" in table
    marker = json.loads((out / "runs" / "baseline" / "c1" / "train_done.json").read_text())
    assert marker["threads"] == launch.threads_per_run()
    assert "RuntimeWarning" not in (out / "runs" / "baseline" / "c1" / "logs" / "worker.log").read_text()  # runpy
    saved = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in saved["runs"]] == ["baseline"]
    assert saved["meta"]["not_in_table"]["broken/c1"]["status"] == "failed"
    summary = out / "runs" / "baseline" / "c1" / "eval" / "summary.json"
    mtime = summary.stat().st_mtime_ns

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(UnfinishedRunsError):
        run_experiment(spec, launch)
    again = buffer.getvalue()
    assert "baseline/c1: finished earlier" in again and "baseline/c1: started" not in again
    assert "broken/c1: FAILED" in again and summary.stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------------------------
# submitit
# --------------------------------------------------------------------------------------------


def test_submitit_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ImportError, match=r"pip install submitit .*\[cluster\]"):
        import_submitit()


def test_run_job_requeues_the_same_call():
    pytest.importorskip("submitit")
    job = RunJob(threads=2)
    run = {"method": "baseline", "combo": "c1"}
    delayed = job.checkpoint(run)
    assert delayed.function is job and delayed.args == (run,) and delayed.kwargs == {}
    with pytest.raises(ValueError, match="threads must be >= 1"):
        RunJob(threads=0)


def test_slurm_job_array_submission_and_collect(phantom, tmp_path, monkeypatch):
    """Without a cluster: fake ``srun``/``sbatch`` on PATH; the job script submitit writes is checked."""
    pytest.importorskip("submitit")
    spec = ExperimentSpec(ACDC, "tr1", ["c1", "c2"], ["baseline"], phantom, tmp_path / "out", split="random",
                          overrides=TINY, device="cpu")
    launch = LaunchOptions(executor="slurm", partition="gpu", time_limit_min=90, gpus_per_job=1, cpus_per_job=4,
                           array_parallelism=1, wait=False)
    system_path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="needs Slurm's commands on this machine"):
        run_experiment(spec, launch)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path / 'submitted.sh'}\necho 'Submitted batch job 4242'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{system_path}")
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_experiment(spec, launch)
    assert result["submitted"] == ["baseline/c1", "baseline/c2"]
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --array=0-1%1"):
        assert line in script
    assert str(tmp_path / "out" / "submitit") in script  # job logs in the output folder
    assert json.loads((tmp_path / "out" / "submitit" / "jobs.json").read_text()) == {
        "baseline/c1": "4242_0", "baseline/c2": "4242_1"}
    assert (tmp_path / "out" / "runs" / "baseline" / "c2" / "run.json").is_file()
    # nothing has run yet: --collect writes the (empty) tables and exits non-zero
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        with pytest.raises(SystemExit) as code:
            experiment(collect=True, output_dir=str(tmp_path / "out"))
    assert code.value.code == 1 and "2 of 2 runs are not in the tables" in err.getvalue()
    assert "| baseline/c1 | unfinished |" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.slow
def test_submitit_local_executor_runs_a_run_and_collect(phantom, tmp_path):
    """A real run through submitit (its local executor: the same pickled job as on Slurm), then --collect."""
    pytest.importorskip("submitit")
    out = tmp_path / "experiment"
    spec = ExperimentSpec(ACDC, "tr1", ["c1"], ["baseline"], phantom, out, split="random", overrides=TINY,
                          device="cpu", figures=False)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = run_experiment(spec, LaunchOptions(executor="submitit_local", threads=1, time_limit_min=10))
    log = buffer.getvalue()
    assert re.search(r"baseline/c1: submitted as job \d+ \(local\)", log)
    assert re.search(r"\[1/1 done, 0 running, 0 failed .*\] baseline/c1: finished in .*Dice", log)
    assert [r["method"] for r in result["runs"]] == ["baseline"]
    summary = out / "runs" / "baseline" / "c1" / "eval" / "summary.json"
    assert summary.is_file() and (out / "runs" / "baseline" / "c1" / "models" / "model.pt").is_file()
    job_logs = list((out / "submitit").glob("*_log.out"))
    assert job_logs and "baseline/c1: done in" in job_logs[0].read_text()
    assert json.loads((out / "runs" / "baseline" / "c1" / "train_done.json").read_text())["threads"] == 1

    mtime = summary.stat().st_mtime_ns
    with contextlib.redirect_stdout(io.StringIO()):
        collected = collect_experiment(out)
    assert collected["meta"]["collected"] and collected["meta"]["executed_runs"] == 0
    assert [r["mean_foreground_dice"] for r in collected["runs"]] == [r["mean_foreground_dice"] for r in result["runs"]]
    assert "Collected from the run folders" in (out / "results.md").read_text()
    assert summary.stat().st_mtime_ns == mtime
