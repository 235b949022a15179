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
               "--peers", "none", "--groups", "150x15x300", "--chunk", "128", "--repeat", "1",
               "--workdir", str(tmp_path)]
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


def test_repeated_runs_alternate_and_report_the_median(tmp_path):
    """run_alternated runs the commands in turn, round after round (a shared log shows the order), skips repeating
    a command whose first run took longer than once_beyond; summarized gives the median and the range."""
    sys.path.insert(0, str(ROOT / "bench"))
    from common import Measured, run_alternated, summarized

    order = tmp_path / "order.txt"
    command = lambda word, pause: ["sh", "-c", f"sleep {pause}; echo {word} >> {order}"]  # noqa: E731
    runs = run_alternated({"a": (command("a", 0), tmp_path / "a.log", None),
                           "slow": (command("slow", 0.4), tmp_path / "slow.log", None),
                           "b": (command("b", 0), tmp_path / "b.log", None)}, repeat=3, once_beyond=0.3)
    assert order.read_text().split() == ["a", "slow", "b", "a", "b", "a", "b"]
    assert [len(runs[k]) for k in ("a", "slow", "b")] == [3, 1, 3]
    measured, note = summarized([Measured(s, mb, (1.0, 2.0)) for s, mb in ((3.0, 10.0), (1.0, 30.0), (2.0, 20.0))])
    assert (measured.seconds, measured.peak_mb) == (2.0, 30.0)
    assert note == "median of 3 alternated runs: 1.00-3.00 s"
    assert summarized(runs["slow"])[1] == ""
