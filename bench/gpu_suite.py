"""GPU suite: N = 10,000 samples, M = 1,000,000 simulated int8 variants streamed in chunks, exact per-variant REML,
float32 rotation; end-to-end time and its split into transfer, rotation, optimization and output.

    python3 bench/gpu_suite.py                                  # the full size (meant for one GPU)
    python3 bench/gpu_suite.py --n 500 --m 20000 --chunk 1024   # small, runs on a CPU in a minute

Runs unchanged wherever JAX finds a device (CUDA when jax[cuda] is installed, else CPU). Genotypes come from a pool
of ``--pool`` simulated int8 chunks cycled through (so the host does not hold N x M values; the pool is generated
before timing starts). Two measurements:

1. end to end: ``jaxlmm.scan(y, chunks, kinship=K, rotation_dtype=float32, chunk_size=C)`` on all M variants,
   after a warm-up scan of one chunk (compilation excluded): eigendecomposition, null model, transfer of the raw
   int8 chunks, imputation, rotation and fits on the device, results back, as a user gets them;
2. the split, replaying the first ``--split-chunks`` chunks stage by stage with ``block_until_ready`` after each:
   transfer (host -> device of the chunk as the scan sends it), rotation (``U'X`` alone in float32), optimization
   (the scan's compiled per-chunk fit minus the rotation time), output (device -> host of the per-variant results).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from common import genotype_chunks  # noqa: E402

import jaxlmm  # noqa: E402

SCAN_MODULE = sys.modules["jaxlmm.scan"]


def simulate(n: int, chunk: int, pool: int, background: int = 5000, seed: int = 7):
    """(y (n,), kinship (n, n) from separate background variants, pool of int8 (n, chunk) genotype chunks)."""
    rng = np.random.default_rng(seed)
    pool_chunks = list(genotype_chunks(n, chunk * pool, chunk=chunk, seed=seed))
    with jax.enable_x64(True):
        kinship = np.zeros((n, n))
        for block in genotype_chunks(n, background, chunk=1000, seed=seed + 1):
            centred = jnp.asarray(block, jnp.float64)
            centred = centred - centred.mean(axis=0)
            kinship += np.asarray(centred @ centred.T)
        kinship /= background
    y = pool_chunks[0][:, :100].astype(float) @ rng.normal(scale=0.1, size=100) + rng.normal(size=n)
    return y, kinship, pool_chunks


def streamed(pool_chunks, m: int):
    """Chunks cycling through the pool until m variants have been yielded."""
    sent, i = 0, 0
    while sent < m:
        chunk = pool_chunks[i % len(pool_chunks)][:, : m - sent]
        sent += chunk.shape[1]
        i += 1
        yield chunk


def captured_fit_arguments(y, kinship, first_chunk, chunk_size, rotation_dtype):
    """The arguments the scan passes to its compiled per-chunk fit (rotation basis, shared data, options)."""
    captured = {}
    original = SCAN_MODULE._fit_chunk

    def spy(rotation_basis, shared, *batch, **options):
        captured.update(rotation_basis=rotation_basis, shared=shared, options=options)
        return original(rotation_basis, shared, *batch, **options)

    SCAN_MODULE._fit_chunk = spy
    try:
        jaxlmm.scan(y, first_chunk, kinship=kinship, chunk_size=chunk_size, rotation_dtype=rotation_dtype)
    finally:
        SCAN_MODULE._fit_chunk = original
    return captured


def _blocked(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def split(y, kinship, pool_chunks, chunk_size, rotation_dtype, chunks: int) -> dict:
    """Seconds per stage summed over ``chunks`` chunks replayed one stage at a time."""
    args = captured_fit_arguments(y, kinship, pool_chunks[0], chunk_size, rotation_dtype)
    fit = partial(SCAN_MODULE._fit_chunk, **args["options"])
    rotate = jax.jit(lambda basis, g: SCAN_MODULE.structure.rotate(basis, g.astype(basis.values.dtype)))
    totals = dict(transfer=0.0, rotation=0.0, optimization=0.0, output=0.0)
    with jax.enable_x64(True):
        for i in range(chunks + 1):  # the first round compiles and is not counted
            host = pool_chunks[i % len(pool_chunks)]  # the raw int8 chunk (imputed on device), as the scan sends it
            means = SCAN_MODULE._summary(host, np.zeros(host.shape[1], bool), 0.0, 1.0).means
            batch = SCAN_MODULE._batch_arguments(host.shape[0], host.shape[1], host.dtype, [(host, means, False)])
            (device, *flags), transfer = _blocked(jax.device_put, batch)
            _, rotation = _blocked(rotate, args["rotation_basis"], device)
            out, fitted = _blocked(fit, args["rotation_basis"], args["shared"], device, *flags)
            start = time.perf_counter()
            jax.tree.map(np.asarray, out)
            output = time.perf_counter() - start
            if i:
                for key, value in zip(totals, (transfer, rotation, fitted - rotation, output)):
                    totals[key] += value
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--m", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--pool", type=int, default=8, help="distinct simulated chunks cycled through")
    parser.add_argument("--split-chunks", type=int, default=4)
    parser.add_argument("--rotation-dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    rotation_dtype = jnp.dtype(args.rotation_dtype)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{len(jax.devices())}; JAX {jax.__version__}; "
          f"N={args.n} M={args.m} chunk={args.chunk}; genotypes int8 on the host; rotation {rotation_dtype}, "
          f"fits float64; load {os.getloadavg()}")
    start = time.perf_counter()
    y, kinship, pool_chunks = simulate(args.n, args.chunk, args.pool)
    print(f"simulation (not timed below): {time.perf_counter() - start:.1f} s")

    jaxlmm.scan(y, pool_chunks[0], kinship=kinship, chunk_size=args.chunk, rotation_dtype=rotation_dtype)  # compile
    start = time.perf_counter()
    result = jaxlmm.scan(y, streamed(pool_chunks, args.m), kinship=kinship, chunk_size=args.chunk,
                         rotation_dtype=rotation_dtype)
    seconds = time.perf_counter() - start
    status = result.columns["status"]
    print(f"end to end: {seconds:.2f} s, {args.m / seconds:,.0f} variants/s "
          f"({(status == 'ok').sum()} ok, {(status == 'not_converged').sum()} not converged); load {os.getloadavg()}")

    structure = SCAN_MODULE.structure
    where = "LAPACK on the host" if jax.default_backend() in structure.EIGH_ON_HOST_PLATFORMS else "on the device"
    start = time.perf_counter()
    jax.block_until_ready(structure.decompose(SCAN_MODULE.center(kinship), "kinship", overwrite=True))
    print(f"eigendecomposition alone, timed apart ({where}, as in the scan, which runs one): "
          f"{time.perf_counter() - start:.2f} s")
    totals = split(y, kinship, pool_chunks, args.chunk, rotation_dtype, args.split_chunks)
    per_variant = args.split_chunks * args.chunk
    print(f"split over {args.split_chunks} chunks of {args.chunk} (stage by stage), extrapolated to M={args.m}:")
    for stage, value in totals.items():
        print(f"  {stage:<13} {value:8.3f} s  -> {value / per_variant * args.m:8.1f} s for M")


if __name__ == "__main__":
    main()
