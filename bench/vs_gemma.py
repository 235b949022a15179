"""jaxlmm against GEMMA on the same PLINK fileset, same kinship, in one run (GEMMA skipped when not installed).

    python3 bench/vs_gemma.py [--bfile tests/fixtures/gemma/mouse_hs1940] [--pheno-col 1]

Steps: GEMMA -gk 1 (kinship), GEMMA -lmm 4 with that kinship; jaxlmm's scan with the same kinship matrix, timed twice
in this process (the first includes compilation, the second is warm), and `jaxlmm scan` as a whole process. Prints
wall times, variants per second, the ratios, and the largest |difference of -log10 p| per test, so a fast wrong
answer shows. Install GEMMA with `apt-get install gemma`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from jaxlmm.io.plink import BedReader
from jaxlmm.scan import scan

ROOT = Path(__file__).resolve().parents[1]


def run_gemma(bfile: Path, pheno_col: int, workdir: Path):
    gemma = shutil.which("gemma")
    if gemma is None:
        print("GEMMA: not installed (apt-get install gemma) - skipped")
        return None
    start = time.perf_counter()
    subprocess.run([gemma, "-bfile", str(bfile), "-gk", "1", "-o", "k", "-outdir", str(workdir)],
                   check=True, capture_output=True)
    kinship_seconds = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([gemma, "-bfile", str(bfile), "-k", str(workdir / "k.cXX.txt"), "-lmm", "4", "-n", str(pheno_col),
                    "-o", "a", "-outdir", str(workdir)], check=True, capture_output=True)
    scan_seconds = time.perf_counter() - start
    return kinship_seconds, scan_seconds, pd.read_csv(workdir / "a.assoc.txt", sep="\t"), np.loadtxt(
        workdir / "k.cXX.txt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bfile", default=str(ROOT / "tests/fixtures/gemma/mouse_hs1940"))
    parser.add_argument("--pheno-col", type=int, default=1)
    args = parser.parse_args()
    bfile = Path(args.bfile)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        gemma = run_gemma(bfile, args.pheno_col, workdir)
        reader = BedReader(bfile)
        phenotype = reader.fam.phenotype
        analyzed = ~np.isnan(phenotype)
        if gemma is not None:
            kinship = gemma[3]
        else:
            from jaxlmm.kinship import relatedness

            kinship = relatedness(reader)
        genotypes = reader[analyzed, :]
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            result = scan(phenotype[analyzed], genotypes, kinship=kinship[np.ix_(analyzed, analyzed)],
                          variant_names=reader.bim.rsid)
            timings.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxlmm.cli", "scan", "--bfile", str(bfile), "--pheno-col",
                        str(args.pheno_col), "--out", str(workdir / "j")], check=True, capture_output=True)
        cli_seconds = time.perf_counter() - start
    m = reader.shape[1]
    print(f"data: {bfile.name}, {analyzed.sum()} samples analyzed, {m} variants")
    print(f"jaxlmm scan (in process, cold incl. compile): {timings[0]:7.2f} s  {m / timings[0]:8.0f} variants/s")
    print(f"jaxlmm scan (in process, warm):               {timings[1]:7.2f} s  {m / timings[1]:8.0f} variants/s")
    print(f"jaxlmm scan CLI (whole process, kinship incl.): {cli_seconds:5.2f} s")
    if gemma is None:
        return
    kinship_seconds, gemma_seconds, ref, _ = gemma
    print(f"GEMMA -gk 1: {kinship_seconds:.2f} s; GEMMA -lmm 4 (whole process): {gemma_seconds:7.2f} s  "
          f"{m / gemma_seconds:8.0f} variants/s")
    print(f"ratio GEMMA / jaxlmm warm: {gemma_seconds / timings[1]:.2f}x; GEMMA (-gk 1 + -lmm 4) / jaxlmm CLI: "
          f"{(kinship_seconds + gemma_seconds) / cli_seconds:.2f}x")
    ours = result.to_pandas().set_index("variant").loc[ref.rs]
    for test in ("p_wald", "p_lrt", "p_score"):
        diff = np.abs(np.log10(ours[test].to_numpy()) - np.log10(ref[test].to_numpy()))
        print(f"max |d -log10 {test}| vs GEMMA: {diff.max():.2e}")


if __name__ == "__main__":
    main()
