"""bench/gpu_check.sh in its CPU mode (tiny sizes, float32): every check of the GPU
script runs here too, so the script does not rot between GPU machines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_in_cpu_mode(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    cmd = ["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path), "--cpu"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {c["name"]: c["status"] for c in summary["checks"]}
    assert res.returncode == 0, (status, res.stdout[-3000:])
    assert status["gpu-tests"] == "skip"  # no CUDA: the gpu-marked tests skip themselves
    expected = {"train-eval", "engine-peft", "serve-16", "users-hour", "proper-flat"}
    assert {n for n, s in status.items() if s == "ok"} >= expected, status
    assert (tmp_path / "gpu_check.txt").read_text().splitlines()[-1] == "failed=0"
    gap = next(c for c in summary["checks"] if c["name"] == "engine-peft")["metrics"]
    assert gap["relative_gap"] < 1e-4
