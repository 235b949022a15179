"""Decoding speed of the BGEN reader and of the Hardy-Weinberg exact test, in one process.

    PYTHONPATH=. python3 bench/bgen_and_hwe.py [--samples 10000] [--variants 200] [--hwe-variants 100000]

BGEN: random genotype probabilities (1% missing) written with tests/bgen_writer.py at 8, 16 and 3 bits, zlib,
zstd (when ``zstandard`` is installed) and uncompressed; prints the time to open (the one-pass variant index) and
variants/s of a full ``reader[:, :]`` (best of 3). HWE: genotype counts of ``--hwe-variants`` variants with minor
allele frequencies uniform on (0, 0.5) in ``--samples`` samples; prints seconds for :func:`jaxlmm.hwe.hwe_exact`.
Numpy on the CPU only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bgen_writer import write_bgen  # noqa: E402

from jaxlmm.hwe import GenotypeCounts, hwe_exact  # noqa: E402
from jaxlmm.io.bgen import BgenReader  # noqa: E402


def best_of(repeats, function):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_bgen(n, m, folder):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet([1, 1, 1], size=(m, n))
    probabilities[rng.random((m, n)) < 0.01] = np.nan
    try:
        import zstandard  # noqa: F401

        compressions = {"zlib": 1, "zstd": 2, "none": 0}
    except ImportError:
        compressions = {"zlib": 1, "none": 0}
    for bits in (8, 16, 3):
        for name, flag in compressions.items():
            path = Path(folder) / f"b{bits}_{name}.bgen"
            write_bgen(path, probabilities, bits=bits, compression=flag)
            start = time.perf_counter()
            reader = BgenReader(path)
            opened = time.perf_counter() - start
            seconds = best_of(3, lambda: reader[:, :])
            print(f"bgen n={n} m={m} bits={bits:2d} {name:4s}: open {opened * 1e3:6.1f} ms, "
                  f"{m / seconds:8.0f} variants/s ({n * m / seconds / 1e6:5.1f} M genotypes/s)")


def bench_hwe(n, m):
    rng = np.random.default_rng(1)
    freq = rng.uniform(0.0, 0.5, size=m)
    counts = np.array([rng.multinomial(n, [(1 - f) ** 2, 2 * f * (1 - f), f * f]) for f in freq])
    seconds = best_of(1, lambda: hwe_exact(GenotypeCounts(*counts.T)))
    print(f"hwe_exact: {m} variants x {n} samples in {seconds:.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--variants", type=int, default=200)
    parser.add_argument("--hwe-variants", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench_bgen(args.samples, args.variants, folder)
    bench_hwe(args.samples, args.hwe_variants)


if __name__ == "__main__":
    main()
