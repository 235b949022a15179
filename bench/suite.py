"""jaxlmm against GEMMA, JAMMA, lme4 and statsmodels on the same data in one run, plus the floor.

    python3 bench/suite.py                       # quick default (a few minutes): mouse HS1940, N=1000 M=10000, groups
    python3 bench/suite.py --sim 500x300000,5000x50000,1000x10000,1000x100000 --skip mouse,groups

Sections (``--skip`` any of them: mouse, sim, groups, floor, cli):
* mouse HS1940 (``tests/fixtures/gemma/mouse_hs1940``, phenotype 1) and simulated PLINK filesets (``--sim NxM,...``):
  ``-gk 1`` kinship (GEMMA, JAMMA; jaxlmm's ``relatedness`` in process), then ``-lmm 1`` and ``-lmm 4`` with that same
  kinship (GEMMA, JAMMA) against the ``jaxlmm scan`` CLI (whole process: a first run of each tool, which may
  compile and keeps the text kinship parsed, then ``--repeat`` runs of every tool in turn with those caches warm,
  the median reported, so that a noisy machine's slow spells fall on all tools alike; JAMMA likewise reads the
  ``.npy`` it keeps beside a text kinship after its first run, GEMMA parses the text every time), and jaxlmm's
  library scan in process (compile excluded).
* the floor for each simulated fileset: one pass decoding the genotype matrix plus the rotation ``U'G`` alone.
* grouping-factor scan (N = 2,000, 100 families): lme4 ``lmer`` loop and statsmodels ``MixedLM`` loop on a subset
  of variants, ``jaxlmm.scan(..., groups=...)`` on all; per-variant rates.
Peers are used when installed and skipped with a line saying so: GEMMA (``gemma`` on PATH or $GEMMA), JAMMA
($JAMMA, else ``bench/.venv-jamma/bin/jamma``, else PATH), R with lme4 (``Rscript``), statsmodels (importable).
Prints one table (wall s, variants/s, peak MB from ``/usr/bin/time -v``, 1-min load before/after, peer time over
jaxlmm's) and the largest p-value differences against every peer.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from common import (ROOT, Measured, Row, format_differences, load_average, p_value_differences, print_table,  # noqa: E402
                    run_alternated, run_measured, summarized, timed_call, which, write_kinship, write_plink)

from jaxlmm.io.plink import BedReader  # noqa: E402
from jaxlmm.kinship import passing_variants, relatedness  # noqa: E402
from jaxlmm.pvalues import f1_sf  # noqa: E402
from jaxlmm.scan import center, default_chunk_size, scan  # noqa: E402

MOUSE = ROOT / "tests" / "fixtures" / "gemma" / "mouse_hs1940"
JAMMA_DEFAULT = ROOT / "bench" / ".venv-jamma" / "bin" / "jamma"
REPEAT_ONCE_BEYOND = 60.0  # seconds: whole-process runs longer than this are not repeated (GEMMA at N = 500 M = 300k)


class Peers:
    def __init__(self, wanted):
        self.wanted = wanted
        self.gemma = which("gemma", "GEMMA") if "gemma" in wanted else None
        self.jamma = which("jamma", "JAMMA", JAMMA_DEFAULT) if "jamma" in wanted else None

    def absent(self, tool: str) -> str:
        return f"{tool} not installed" if tool.lower() in self.wanted else f"{tool} not requested (--peers)"


def _peer_command(tool, exe, bfile, out, workdir, *extra):
    command = [exe, "-bfile", str(bfile), "-o", out, "-outdir", str(workdir), *extra]
    return command + ["--no-telemetry"] if tool == "JAMMA" else command


def _kinship_rows(name, bfile, reader, analyzed, peers, workdir, rows):
    """-gk 1 with each peer; jaxlmm's relatedness in process (second call reported). Returns jaxlmm's kinship."""
    passing = passing_variants(reader[analyzed, :]) if reader.shape[1] <= 50_000 else None
    mask = passing if passing is not None else _passing_chunked(reader, analyzed)
    relatedness(reader, mask)  # compile
    kinship, measured = timed_call(relatedness, reader, mask)
    rows.append(Row(name, "jaxlmm (in process)", "-gk 1", reader.shape[1], measured, "library call, warm"))
    for tool, exe in (("GEMMA", peers.gemma), ("JAMMA", peers.jamma)):
        if exe is None:
            rows.append(Row(name, tool, "-gk 1", reader.shape[1], None, peers.absent(tool)))
            continue
        measured = run_measured(_peer_command(tool, exe, bfile, f"gk_{tool}", workdir, "-gk", "1"),
                                workdir / f"gk_{tool}.log")
        rows.append(Row(name, tool, "-gk 1", reader.shape[1], measured, "whole process"))
    return kinship


def _passing_chunked(reader, analyzed, chunk=20_000):
    return np.concatenate([passing_variants(reader[analyzed, start:start + chunk])
                           for start in range(0, reader.shape[1], chunk)])


def _read_assoc(path):
    return pd.read_csv(path, sep="\t")


def _scan_rows(name, bfile, kinship_file, m, peers, workdir, rows, agreement, repeat):
    """-lmm 1 and -lmm 4 with every peer against the jaxlmm CLI: a first run of each (jaxlmm's may compile, JAMMA's
    are slower), then ``repeat`` alternated runs of all (:func:`common.run_alternated`; runs over
    :data:`REPEAT_ONCE_BEYOND` seconds are not repeated), the median reported."""
    cli = [sys.executable, "-m", "jaxlmm.cli", "scan", "--bfile", str(bfile), "--pheno-col", "1",
           "--kinship", str(kinship_file)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = run_measured(cli + ["--out", str(workdir / "jaxlmm1")], workdir / "jaxlmm1.log", env)
    rows.append(Row(name, "jaxlmm CLI", "-lmm 4 [1st run]", m, first, "whole process, may compile"))
    commands, absent = {"jaxlmm": (cli + ["--out", str(workdir / "jaxlmm")], workdir / "jaxlmm.log", env)}, {}
    for tool, exe in (("GEMMA", peers.gemma), ("JAMMA", peers.jamma)):
        for lmm in ("1", "4"):
            if exe is None:
                absent[tool, lmm] = peers.absent(tool)
                continue
            out = f"{tool}_lmm{lmm}"
            command = _peer_command(tool, exe, bfile, out, workdir, "-k", str(kinship_file), "-lmm", lmm, "-n", "1")
            if tool == "JAMMA":  # its first runs are slower (caches): not counted, like our first
                run_measured(command, workdir / f"{out}.first.log")
            commands[tool, lmm] = (command, workdir / f"{out}.log", None)
    runs = run_alternated(commands, repeat, REPEAT_ONCE_BEYOND)
    measured, spread = summarized(runs["jaxlmm"])
    rows.append(Row(name, "jaxlmm CLI", "-lmm 4", m, measured, "; ".join(
        filter(None, ["whole process, caches warm (compiled programs, parsed kinship)", spread]))))
    rows.append(Row(name, "jaxlmm CLI", "-lmm 1", m, measured, "same runs (all tests at once)"))
    ours = _read_assoc(workdir / "jaxlmm.assoc.tsv")
    for tool in ("GEMMA", "JAMMA"):
        for lmm in ("1", "4"):
            if (tool, lmm) in absent:
                rows.append(Row(name, tool, f"-lmm {lmm}", m, None, absent[tool, lmm]))
                continue
            measured, spread = summarized(runs[tool, lmm])
            rows.append(Row(name, tool, f"-lmm {lmm}", m, measured, "; ".join(filter(None, ["whole process", spread]))))
            agreement.append((name, f"{tool} -lmm {lmm}", format_differences(
                p_value_differences(ours, _read_assoc(workdir / f"{tool}_lmm{lmm}.assoc.txt")))))


def _in_process_rows(name, y, genotypes, kinship, m, rows, chunk_size):
    """jaxlmm's library scan, warm (a first chunk compiles the shape), and the floor: decode + U'G."""
    scan(y, genotypes[:, :chunk_size], kinship=kinship, chunk_size=chunk_size)  # compile this chunk shape
    _, measured = timed_call(scan, y, genotypes, kinship=kinship, chunk_size=chunk_size)
    rows.append(Row(name, "jaxlmm (in process)", "scan exact", m, measured,
                    f"library call, compile excluded, chunk {chunk_size}"))
    return measured.seconds


def _floor_rows(name, genotypes, kinship, m, rows, chunk_size, scan_seconds):
    """One decoding pass over the genotypes plus U'G in float64 (chunks of the scan's size), timed apart."""
    with jax.enable_x64(True):
        start = time.perf_counter()
        basis = jnp.asarray(np.ascontiguousarray(np.linalg.eigh(center(kinship))[1].T))  # U' as rows: the fast way
        eigh_seconds = time.perf_counter() - start
        rotate = jax.jit(lambda basis, g: basis @ g)
        rotate(basis, jnp.zeros((kinship.shape[0], chunk_size))).block_until_ready()
        read_seconds = rotate_seconds = 0.0
        load = load_average()
        for begin in range(0, m, chunk_size):
            start = time.perf_counter()
            block = np.asarray(genotypes[:, begin:begin + chunk_size], dtype=float)
            block = np.where(np.isnan(block), 0.0, block)
            padded = np.zeros((block.shape[0], chunk_size))
            padded[:, :block.shape[1]] = block
            read_seconds += time.perf_counter() - start
            start = time.perf_counter()
            rotate(basis, jnp.asarray(padded)).block_until_ready()
            rotate_seconds += time.perf_counter() - start
    floor = read_seconds + rotate_seconds
    rows.append(Row(name, "floor", "read + U'G", m, Measured(floor, float("nan"), (load, load_average())),
                    f"read {read_seconds:.2f} s + U'G {rotate_seconds:.2f} s (eigh {eigh_seconds:.2f} s apart); "
                    f"jaxlmm scan / floor = {scan_seconds / floor:.2f} "
                    f"({(scan_seconds - eigh_seconds) / floor:.2f} without the scan's eigh)"))


def plink_section(name, bfile, peers, rows, agreement, chunk_size, skip, repeat=1):
    reader = BedReader(bfile)
    analyzed = ~np.isnan(reader.fam.phenotype)
    m = reader.shape[1]
    chunk_size = chunk_size or default_chunk_size(int(analyzed.sum()))  # the CLI's, unless one is given
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        kinship = _kinship_rows(name, bfile, reader, analyzed, peers, workdir, rows)
        kinship_file = workdir / "kinship.txt"
        write_kinship(kinship_file, kinship)
        if "cli" not in skip:
            _scan_rows(name, bfile, kinship_file, m, peers, workdir, rows, agreement, repeat)
    sub = np.ix_(analyzed, analyzed)
    from jaxlmm.pipeline import ScannedGenotypes

    genotypes = ScannedGenotypes(reader, analyzed)
    seconds = _in_process_rows(name, reader.fam.phenotype[analyzed], genotypes, kinship[sub], m, rows, chunk_size)
    if "floor" not in skip:
        _floor_rows(name, genotypes, kinship[sub], m, rows, chunk_size, seconds)


def groups_section(rows, agreement, wanted, n, families, m, lme4_variants, statsmodels_variants):
    from group_peers import lme4_loop, simulate_groups, statsmodels_loop

    name = f"groups N={n} F={families}"
    y, genotypes, family = simulate_groups(n, families, m)
    with jax.enable_x64(True):
        chunk_size = default_chunk_size(n)
        scan(y, genotypes[:, :chunk_size], groups=family)  # compile
        result, measured = timed_call(scan, y, genotypes, groups=family)
    rows.append(Row(name, "jaxlmm (in process)", "(1|family) scan", m, measured, "library call, compile excluded"))
    ours = result.columns
    df = n - 2
    for tool, k, runner in (("lme4 lmer loop", lme4_variants, lme4_loop),
                            ("statsmodels MixedLM", statsmodels_variants, statsmodels_loop)):
        short = tool.split()[0]
        out = runner(y, genotypes[:, :k], family) if short in wanted else None
        if out is None:
            rows.append(Row(name, tool, "(1|family) scan", k, None,
                            f"{short} not installed or failed" if short in wanted else f"{short} not requested"))
            continue
        seconds, beta, se = out
        rows.append(Row(name, tool, "(1|family) scan", k, Measured(seconds, float("nan"), (np.nan, load_average())),
                        f"{k} variants (loop only); jaxlmm throughput / {short}: "
                        f"{(m / measured.seconds) / (k / seconds):,.0f}x"))
        with jax.enable_x64(True):
            p_peer = np.asarray(f1_sf(jnp.asarray((beta / se) ** 2), df))
        p_ours = ours["p_wald"][:k]
        agreement.append((name, tool, f"p_wald (peer's beta/se, F(1, {df})): |dp| {np.max(np.abs(p_peer - p_ours)):.1e},"
                          f" |d-log10p| {np.max(np.abs(np.log10(p_peer) - np.log10(p_ours))):.1e}; "
                          f"max rel. d beta {np.max(np.abs(beta / ours['beta'][:k] - 1)):.1e}"))


def _sizes(text):
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", default="1000x10000", help="simulated sizes NxM, comma-separated")
    parser.add_argument("--skip", default="",
                        help="sections to skip: mouse, sim, groups, floor, cli (whole-process scans, peers' -lmm)")
    parser.add_argument("--peers", default="gemma,jamma,lme4,statsmodels", help="peers to run ('none': jaxlmm only)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="jaxlmm chunk size of the in-process scans and the floor (default: the CLI's, "
                             "jaxlmm.scan.default_chunk_size)")
    parser.add_argument("--groups", default="2000x100x20000", help="grouping-factor scan N x families x M")
    parser.add_argument("--lme4-variants", type=int, default=20)
    parser.add_argument("--statsmodels-variants", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="keep simulated filesets here (default: a temporary dir)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternated whole-process runs of jaxlmm and each peer; the median is reported (runs "
                             f"over {REPEAT_ONCE_BEYOND:.0f} s are not repeated)")
    args = parser.parse_args()
    skip, wanted = set(args.skip.split(",")), set(args.peers.split(","))
    peers = Peers(wanted)
    print(f"jaxlmm bench suite, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; host {platform.node()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()}; JAX {jax.__version__} on "
          f"{jax.devices()[0].device_kind} x{len(jax.devices())}; fits in float64")
    print(f"peers: GEMMA {peers.gemma or 'absent'}; JAMMA {peers.jamma or 'absent (set $JAMMA or create bench/.venv-jamma)'}"
          f"; Rscript {which('Rscript') or 'absent'}")
    rows, agreement = [], []
    if "mouse" not in skip:
        plink_section("mouse_hs1940", MOUSE, peers, rows, agreement, args.chunk, skip, args.repeat)
    if "sim" not in skip:
        keep = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="jaxlmm-bench-"))
        keep.mkdir(parents=True, exist_ok=True)
        for n, m in _sizes(args.sim):
            prefix = keep / f"sim_{n}x{m}"
            if not Path(str(prefix) + ".bed").exists():
                write_plink(prefix, n, m)
            plink_section(f"sim N={n} M={m}", prefix, peers, rows, agreement, args.chunk, skip, args.repeat)
    if "groups" not in skip:
        n, families, m = map(int, args.groups.split("x"))
        groups_section(rows, agreement, wanted, n, families, m, args.lme4_variants, args.statsmodels_variants)
    print()
    print_table(rows)
    print("\nlargest p-value differences, jaxlmm CLI (or scan) against each peer:")
    for name, tool, text in agreement:
        print(f"  {name:<22} {tool:<22} {text}")
    print(f"\nload at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
