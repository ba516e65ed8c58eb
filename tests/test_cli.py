"""The command line: ``python -m plc_monai <command>``."""

from __future__ import annotations

import sys

from plc_monai import cli


def _bundle_environment(tmp_path) -> str:
    """What a bundle process started by the demo finds in ``GLIBC_TUNABLES``."""
    log = tmp_path / "env.log"
    cli._run([sys.executable, "-c", "import os; print(os.environ.get('GLIBC_TUNABLES'))"], log)
    return log.read_text().strip()


def test_demo_bundle_processes_keep_freed_memory_unless_the_caller_chose(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert _bundle_environment(tmp_path) == cli.DEMO_MALLOC_TUNABLES
    own = "glibc.malloc.trim_threshold=0"
    monkeypatch.setenv("GLIBC_TUNABLES", own)
    assert _bundle_environment(tmp_path) == own
