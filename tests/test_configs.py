"""TOML configs (configs/), the embedded demo end to end, and crash safety of `jaxlmm scan`: a run killed with
SIGKILL mid-scan and resumed, and a run split with --part and merged, both give the uninterrupted run's bytes."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from jaxlmm import InputError
from jaxlmm.config import scan_config

ROOT = Path(__file__).parent.parent
CHUNK = "64"  # small chunks: many commits, so a kill lands mid-scan


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "jaxlmm.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          **kwargs)


def test_config_keys_types_and_precedence(tmp_path):
    (tmp_path / "c.toml").write_text('bfile = "data/x"\nout = "res/x"\nchunk = 128\nmin_maf = 0\nplots = true\n')
    config = scan_config(tmp_path / "c.toml", chunk=256, mode="null")
    assert config.bfile == str(tmp_path / "data" / "x") and config.out == str(tmp_path / "res" / "x")
    assert config.chunk == 256 and config.mode == "null" and config.min_maf == 0.0 and config.plots is True
    (tmp_path / "u.toml").write_text('bfile = "x"\nout = "y"\nchunk_size = 3\n')
    with pytest.raises(InputError, match="unknown key 'chunk_size'"):
        scan_config(tmp_path / "u.toml")
    (tmp_path / "t.toml").write_text('bfile = "x"\nout = "y"\nchunk = "big"\n')
    with pytest.raises(InputError, match="key 'chunk' must be a integer, got 'big'"):
        scan_config(tmp_path / "t.toml")
    (tmp_path / "b.toml").write_text('bfile = "x"\nout = "y"\nplots = 1\n')
    with pytest.raises(InputError, match="key 'plots' must be a true/false"):
        scan_config(tmp_path / "b.toml")
    (tmp_path / "m.toml").write_text('bfile = "x"\nout = "y"\nmode = "fast"\n')
    with pytest.raises(InputError, match="key 'mode' must be one of exact, null"):
        scan_config(tmp_path / "m.toml")
    (tmp_path / "s.toml").write_text('bfile = "x"\nout = \n')
    with pytest.raises(InputError, match="not valid TOML"):
        scan_config(tmp_path / "s.toml")
    with pytest.raises(InputError, match="give the genotypes as one of bfile"):
        scan_config(out="y")
    with pytest.raises(InputError, match="part must look like i/n"):
        scan_config(bfile="x", out="y", part="2-3")


@pytest.mark.parametrize("name", ["demo.toml", "mouse_hs1940.toml", "mouse_hs1940_bimbam.toml"])
def test_shipped_configs_point_at_files(name):
    config = scan_config(ROOT / "configs" / name)
    inputs = [config.bfile + ".bed"] if config.bfile else [config.geno, config.pheno, config.anno]
    assert all(os.path.exists(path) for path in inputs), inputs


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    done = _cli("scan", "--config", "configs/demo.toml", "--chunk", CHUNK, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_demo_recovers_its_causal_variants(demo_run):
    truth = json.loads((ROOT / "jaxlmm" / "data" / "demo_truth.json").read_text())
    table = pd.read_csv(f"{demo_run}.assoc.tsv", sep="\t")
    assert len(table) == truth["variants"]
    top = table[table.status == "ok"].sort_values("p_wald").rs.head(len(truth["causal_variants"]))
    assert set(top) == set(truth["causal_variants"])
    log = Path(f"{demo_run}.log.txt").read_text()
    assert "rows in == rows out: True" in log and f"samples analyzed: {truth['samples'] - 10} of" in log
    for kind in ("manhattan", "qq"):
        png = Path(f"{demo_run}.{kind}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 400 and height >= 400 and len(png) > 20_000


def test_killed_scan_resumes_to_identical_output(demo_run, tmp_path):
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "jaxlmm.cli", "scan", "--config", "configs/demo.toml", "--chunk", CHUNK,
            "--out", str(out)]
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = Path(f"{out}.assoc.tsv.resume.json")
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text() or "{}").get("rows", 0) >= 4 * int(CHUNK):
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not Path(f"{out}.assoc.tsv").exists(), "the run finished before it was killed"
    assert Path(f"{out}.assoc.tsv.partial").exists()
    done = _cli("scan", "--config", "configs/demo.toml", "--chunk", CHUNK, "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed: " in done.stdout
    assert Path(f"{out}.assoc.tsv").read_bytes() == Path(f"{demo_run}.assoc.tsv").read_bytes()
    assert not Path(f"{out}.assoc.tsv.partial").exists()


def test_parts_merge_to_identical_output(demo_run, tmp_path):
    out = tmp_path / "split"
    for part in ("2/3", "1/3", "3/3"):
        done = _cli("scan", "--config", "configs/demo.toml", "--chunk", CHUNK, "--out", str(out), "--part", part,
                    "--plots", "--mode", "exact")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "rows in == rows out: True" in done.stdout
    done = _cli("merge", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert Path(f"{out}.assoc.tsv").read_bytes() == Path(f"{demo_run}.assoc.tsv").read_bytes()
    os.remove(f"{out}.part2of3.assoc.tsv")
    done = _cli("merge", "--out", str(out))
    assert done.returncode == 2 and "parts [2] of 3 are missing" in done.stderr


def test_two_process_distributed_run_equals_one_process(demo_run, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "dist"
    processes = [
        subprocess.Popen([sys.executable, "-m", "jaxlmm.cli", "scan", "--config", "configs/demo.toml", "--chunk",
                          CHUNK, "--out", str(out), "--distributed", "--coordinator", f"127.0.0.1:{port}",
                          "--num-processes", "2", "--process-id", str(i)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "process 1 of 2" in outputs[0][0] and "process 2 of 2" in outputs[1][0]
    assert "jaxlmm merge: 2 parts" in outputs[0][0]
    assert Path(f"{out}.assoc.tsv").read_bytes() == Path(f"{demo_run}.assoc.tsv").read_bytes()
    assert not Path(f"{out}.part1of2.assoc.tsv").exists()
