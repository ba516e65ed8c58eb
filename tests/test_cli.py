"""The command line: ``python -m plc_monai <command>``."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plc_monai import cli
from plc_monai.__main__ import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def _bundle_environment(tmp_path) -> str:
    """What a bundle process started by the demo finds in ``GLIBC_TUNABLES``."""
    log = tmp_path / "env.log"
    cli._run([sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES'))"], log)
    return log.read_text().splitlines()[-1]  # after the command line that the log starts with


def test_demo_bundle_processes_keep_freed_memory_unless_the_caller_chose(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _bundle_environment(tmp_path) == cli.DEMO_MALLOC_TUNABLES
    own = "glibc.malloc.trim_threshold=0"
    monkeypatch.setenv("GLIBC_TUNABLES", own)
    assert _bundle_environment(tmp_path) == own


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help_prints_help_and_runs_nothing(name, flag, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # every command writes (or reads) relative to the working folder by default
    main([name, "--seed", "3", flag])
    printed = capsys.readouterr().out
    summary = inspect.getdoc(COMMANDS[name]).splitlines()[0]
    assert f"plc_monai {name} - {summary}" in printed and "FLAGS" in printed
    assert not any(tmp_path.iterdir())


def test_demo_help_exits_zero_without_training(tmp_path) -> None:
    """The case a user met: ``demo --help`` used to start the whole demo (fire took it for a bundle override)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "plc_monai", "demo", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "plc_monai demo" in done.stdout and "--num_subjects" in done.stdout
    assert not any(tmp_path.iterdir())
