"""Shared pieces of the benchmark harness: timing subprocesses with peak memory, simulated PLINK filesets,
p-value agreement, and the printed table. Not part of the library."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TIME_BINARY = "/usr/bin/time"
TESTS = ("p_wald", "p_lrt", "p_score")


class Measured(NamedTuple):
    """One timed run: wall seconds, peak resident memory in MB (NaN when unknown), 1-minute load before/after."""

    seconds: float
    peak_mb: float
    load: tuple


def load_average() -> float:
    return os.getloadavg()[0]


def run_measured(command: list, log: Path, env: dict | None = None) -> Measured:
    """Run a command to completion; wall time from this process, peak RSS from ``/usr/bin/time -v`` when present.

    Raises CalledProcessError (with the command's stderr in ``log``) when it fails."""
    before = load_average()
    timed = [TIME_BINARY, "-v", "-o", str(log) + ".time"] + command if os.path.exists(TIME_BINARY) else command
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(timed, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    return Measured(seconds, _peak_mb(Path(str(log) + ".time")), (before, load_average()))


def run_alternated(commands: dict, repeat: int, once_beyond: float = float("inf")) -> dict:
    """Run every command of ``commands`` (label -> (command, log path, env or None)) once, in order, then again
    ``repeat - 1`` times in the same order, so that each tool sees the same spells of a noisy machine. A command whose
    first run took longer than ``once_beyond`` seconds is not repeated (a ratio of 20x is not at the mercy of 10%
    noise). Returns label -> list of :class:`Measured`, in run order; the logs are those of the last run."""
    runs = {label: [] for label in commands}
    for round_ in range(max(repeat, 1)):
        for label, (command, log, env) in commands.items():
            if round_ and runs[label][0].seconds > once_beyond:
                continue
            runs[label].append(run_measured(command, log, env))
    return runs


def summarized(runs: list) -> tuple:
    """(Measured, note) of repeated runs: median wall time, largest peak memory, the load before the first and after
    the last; the note gives the count and the range ("median of 3 alternated runs: 3.41-4.02 s"), empty for one."""
    seconds = [run.seconds for run in runs]
    peaks = [run.peak_mb for run in runs if np.isfinite(run.peak_mb)]
    median = Measured(float(np.median(seconds)), max(peaks, default=float("nan")), (runs[0].load[0], runs[-1].load[1]))
    if len(runs) == 1:
        return median, ""
    return median, f"median of {len(runs)} alternated runs: {min(seconds):.2f}-{max(seconds):.2f} s"


def _peak_mb(time_log: Path) -> float:
    if not time_log.exists():
        return float("nan")
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_log.read_text())
    return int(found.group(1)) / 1024 if found else float("nan")


def timed_call(fn, *args, **kwargs):
    """(result, Measured) of an in-process call; the caller blocks on device work inside ``fn``."""
    before = load_average()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, Measured(time.perf_counter() - start, float("nan"), (before, load_average()))


def which(name: str, env_var: str | None = None, default: Path | None = None) -> str | None:
    """Path of a peer's executable: $env_var, then default, then PATH; None when absent."""
    for candidate in (os.environ.get(env_var) if env_var else None, default):
        if candidate and os.path.exists(candidate):
            return str(candidate)
    return shutil.which(name)


# ----------------------------------------------------------------------------------------------------------------
# simulated PLINK filesets


def _bed_bytes(genotypes: np.ndarray) -> np.ndarray:
    """(n, b) counts of A1 (0/1/2, int) -> (b, ceil(n/4)) SNP-major .bed bytes (2 -> 00, 1 -> 10, 0 -> 11)."""
    n, b = genotypes.shape
    codes = np.array([3, 2, 0], dtype=np.uint8)[genotypes.T]  # (b, n)
    padded = np.zeros((b, -(-n // 4) * 4), dtype=np.uint8)
    padded[:, :n] = codes
    quads = padded.reshape(b, -1, 4)
    return (quads[:, :, 0] | quads[:, :, 1] << 2 | quads[:, :, 2] << 4 | quads[:, :, 3] << 6).astype(np.uint8)


def genotype_chunks(n: int, m: int, chunk: int = 4096, seed: int = 1, populations: int = 10, fst: float = 0.05):
    """Yield (n, b) int8 genotypes for m variants: Balding-Nichols structure over ``populations`` groups."""
    rng = np.random.default_rng(seed)
    population = rng.integers(populations, size=n)
    for start in range(0, m, chunk):
        b = min(chunk, m - start)
        p = rng.uniform(0.05, 0.5, size=b)
        shape = (1 - fst) / fst
        local = rng.beta(p * shape, (1 - p) * shape, size=(populations, b))  # (populations, b)
        yield rng.binomial(2, local[population]).astype(np.int8)


def write_plink(prefix: Path, n: int, m: int, seed: int = 1, causal: int = 200) -> None:
    """Simulated fileset PREFIX.bed/.bim/.fam, phenotype in the .fam's column 6 (polygenic from the first
    ``causal`` variants plus noise); written chunk by chunk, so memory stays bounded."""
    rng = np.random.default_rng(seed + 1)
    phenotype = rng.normal(size=n)
    with open(str(prefix) + ".bed", "wb") as bed:
        bed.write(bytes([0x6C, 0x1B, 0x01]))
        offset = 0
        for chunk in genotype_chunks(n, m, seed=seed):
            if offset < causal:
                part = chunk[:, : causal - offset].astype(float)
                phenotype += (part - part.mean(axis=0)) @ rng.normal(scale=0.1, size=part.shape[1])
            bed.write(_bed_bytes(chunk).tobytes())
            offset += chunk.shape[1]
    ids = np.arange(1, m + 1)
    pd.DataFrame({"chr": 1 + (ids - 1) * 22 // m, "rs": [f"rs{i}" for i in ids], "cm": 0, "pos": ids * 100,
                  "a1": "A", "a0": "G"}).to_csv(str(prefix) + ".bim", sep="\t", header=False, index=False)
    samples = [f"s{i}" for i in range(1, n + 1)]
    pd.DataFrame({"fid": samples, "iid": samples, "p": 0, "m": 0, "sex": 0, "y": phenotype}).to_csv(
        str(prefix) + ".fam", sep=" ", header=False, index=False, float_format="%.8f")


def write_kinship(path: Path, kinship: np.ndarray) -> None:
    """GEMMA's text format (one row per line, tab-separated)."""
    np.savetxt(path, kinship, delimiter="\t", fmt="%.10g")


# ----------------------------------------------------------------------------------------------------------------
# agreement and the table


def p_value_differences(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict:
    """Largest |p difference| and |-log10 p difference| per test both tables have, matched on rs among the
    variants both report with a finite value. ours: jaxlmm's .assoc.tsv, theirs: a GEMMA-style .assoc.txt."""
    merged = ours.merge(theirs, on="rs", suffixes=("", "_peer"))
    out = {}
    for test in TESTS:
        if test in theirs.columns and test in ours.columns:
            a, b = merged[test].to_numpy(float), merged[test + "_peer"].to_numpy(float)
            keep = np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0)
            if keep.any():
                out[test] = (float(np.max(np.abs(a[keep] - b[keep]))),
                             float(np.max(np.abs(np.log10(a[keep]) - np.log10(b[keep])))), int(keep.sum()))
    return out


def format_differences(diffs: dict) -> str:
    return "; ".join(f"{k}: |dp| {d:.1e}, |d-log10p| {dl:.1e} ({n} SNPs)" for k, (d, dl, n) in diffs.items()) or "-"


class Row(NamedTuple):
    data: str
    tool: str
    task: str
    variants: int
    measured: Measured | None
    note: str = ""


def print_table(rows: list, reference_tool: str = "jaxlmm") -> None:
    """Wall time, variants/s, peak MB, load, and jaxlmm's speed-up over each row: its time per variant over
    jaxlmm's for the same data and task key (the task's text up to ' ['; the last jaxlmm row of a key counts)."""
    def key(row):
        return row.data, row.task.split(" [")[0]

    ours = {key(r): r.measured.seconds / r.variants for r in rows if r.tool.startswith(reference_tool) and r.measured}
    header = f"{'data':<22} {'tool':<22} {'task':<30} {'wall s':>8} {'variants/s':>11} {'peak MB':>8} " \
             f"{'load':>9} {'vs jaxlmm':>9}  note"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.measured is None:
            print(f"{r.data:<22} {r.tool:<22} {r.task:<30} {'skipped':>8}  {r.note}")
            continue
        m = r.measured
        rate = r.variants / m.seconds if r.variants else float("nan")
        ratio = (m.seconds / r.variants / ours[key(r)] if key(r) in ours and not r.tool.startswith(reference_tool)
                 else float("nan"))
        ratio_text = f"{ratio:8.2f}x" if np.isfinite(ratio) else ""
        print(f"{r.data:<22} {r.tool:<22} {r.task:<30} {m.seconds:8.2f} {rate:11.0f} {m.peak_mb:8.0f} "
              f"{m.load[0]:4.1f}/{m.load[1]:<4.1f} {ratio_text:>9}  {r.note}")
