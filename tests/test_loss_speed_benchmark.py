"""benchmarks/loss_speed.py at a tiny size on CPU: it runs both implementations and writes what it measured."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_modules import load_benchmark  # noqa: E402


def test_tiny_run_writes_results(tmp_path) -> None:
    out = tmp_path / "loss_speed.json"
    args = ["--device", "cpu", "--batch", "4", "--size", "16", "--repeats", "2", "--loop-repeats", "1",
            "--warmup", "1", "--matching", "intra", "inter", "--out", str(out)]
    payload = load_benchmark("loss_speed").main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(payload))
    assert payload["problem"] == {"batch": 4, "dim": 16, "spatial": [16, 16], "classes": 4, "num_samples": 3}
    assert [r["matching"] for r in payload["results"]] == ["intra", "inter"]
    for r in payload["results"]:
        assert r["vectorised_runs"] == 4 and r["loop_runs"] == 1
        assert math.isclose(r["speedup_median"], r["loop_ms_median"] / r["vectorised_ms_median"])
        assert 0 < r["vectorised_ms_min"] <= r["vectorised_ms_median"]
    assert not list(tmp_path.glob("*.tmp"))  # pathlib matches the hidden temp names of atomic_files too
