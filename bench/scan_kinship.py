"""Scan benchmark: N samples, M variants, one kinship, intercept only (issue 3's size by default).

    python3 bench/scan_kinship.py [--n 2000] [--m 10000] [--chunk 512]

Simulates genotypes (binomial, MAF 0.05-0.5) and a kinship from separate variants, runs one small warm-up scan of the
same chunk shape (so compilation is excluded), then times the exact and the null-mode scan end to end (null models,
eigendecomposition, rotation, per-variant fits) and prints variants per second with the device and dtype.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jaxlmm.scan import scan


def simulate(n: int, m: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    background = rng.binomial(2, rng.uniform(0.05, 0.5, size=2000), size=(n, 2000)).astype(float)
    centred = background - background.mean(axis=0)
    kinship = centred @ centred.T / background.shape[1]
    genotypes = rng.binomial(2, rng.uniform(0.05, 0.5, size=m), size=(n, m)).astype(np.int8)
    y = centred @ rng.normal(scale=0.03, size=2000) + genotypes[:, :10] @ rng.normal(scale=0.2, size=10)
    return y + rng.normal(size=n), genotypes, kinship


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--m", type=int, default=10000)
    parser.add_argument("--chunk", type=int, default=512)
    args = parser.parse_args()
    y, genotypes, kinship = simulate(args.n, args.m)
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}; fits in float64; N={args.n} M={args.m}")
    for mode in ("exact", "null"):
        scan(y, genotypes[:, : args.chunk], kinship=kinship, chunk_size=args.chunk, mode=mode)  # compile
        start = time.perf_counter()
        result = scan(y, genotypes, kinship=kinship, chunk_size=args.chunk, mode=mode)
        seconds = time.perf_counter() - start
        ok = (result.columns["status"] == "ok").sum()
        print(f"jaxlmm scan mode={mode:5s}: {seconds:7.2f} s  {args.m / seconds:9.0f} variants/s  "
              f"({ok} ok, {args.m - ok} filtered)")


if __name__ == "__main__":
    main()
