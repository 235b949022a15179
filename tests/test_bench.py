"""The benchmark harness runs end to end at toy size, so bench/ cannot rot unnoticed between benchmark runs.

Peers are left out (``--peers none``): the test checks the harness's own code paths (simulated PLINK data, the CLI
scan run twice, the in-process scan, the floor, the grouping-factor scan) and its table, not anybody's speed.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_suite_runs_at_toy_size(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "suite.py"), "--sim", "120x700", "--skip", "mouse",
               "--peers", "none", "--groups", "150x15x300", "--chunk", "128", "--workdir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAXLMM_CACHE_DIR": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for expected in ("jaxlmm CLI", "jaxlmm (in process)", "floor", "(1|family) scan", "GEMMA not requested"):
        assert expected in table, table
    assert "Traceback" not in done.stderr


def test_gpu_suite_runs_on_cpu_at_toy_size(tmp_path):
    command = [sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--n", "200", "--m", "3000", "--chunk", "512",
               "--pool", "2", "--split-chunks", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]
    for expected in ("end to end:", "transfer", "rotation", "optimization", "output"):
        assert expected in done.stdout, done.stdout
