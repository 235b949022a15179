"""Learn the weights of several kinship matrices by maximizing the REML likelihood through the fit (optax outer loop).

    python3 bench/kernel_weights.py [--bfile tests/fixtures/gemma/mouse_hs1940] [--n 600] [--steps 40] [--lr 0.3]

Data: GEMMA's mouse HS1940 example, phenotype 1, ``--n`` analyzed mice drawn at random (the dense path costs one
n x n Cholesky per criterion evaluation). Kernels: the genome-wide centred relatedness (GEMMA ``-gk 1``, variants
passing GEMMA's filters) and one per chromosome (the same matrix from that chromosome's variants only), so
``K(a) = sum_k softmax(a)_k K_k`` ranges over convex combinations of 20 kernels.

Outer loop: ``a <- adam(a, d criterion*(a) / d a)`` where ``criterion*(a)`` is the REML criterion (-2 log restricted
likelihood) at the fitted variance components for kernel K(a): each step is one ``jaxlmm.differentiable_fit`` and
its gradient by the implicit function theorem (``jax.value_and_grad``, jitted, compile excluded from the step
times). Prints the criterion and heritability along the way, the learned weights, the criterion with the genome-wide
kernel alone, and a central-difference check of the final gradient.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see bench/differentiable_timing.py

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxlmm  # noqa: E402
from jaxlmm.io.plink import BedReader  # noqa: E402
from jaxlmm.kinship import passing_variants, relatedness  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mouse_kernels(bfile: Path, n: int, seed: int):
    """y (n,), names (k,), kernels (k, n, n): genome-wide first, then one per chromosome, for n random mice."""
    reader = BedReader(bfile)
    analyzed = np.flatnonzero(~np.isnan(reader.fam.phenotype))
    rows = np.sort(np.random.default_rng(seed).choice(analyzed, size=min(n, analyzed.size), replace=False))
    genotypes = reader[rows, :]
    passing = passing_variants(genotypes)
    names, kernels = ["genome"], [relatedness(genotypes, passing)]
    for chrom in sorted(set(reader.bim.chrom), key=lambda c: (len(c), c)):
        mask = passing & (reader.bim.chrom == chrom)
        if mask.any():
            names.append(f"chr{chrom}")
            kernels.append(relatedness(genotypes, mask))
    return reader.fam.phenotype[rows], names, np.stack(kernels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bfile", default=str(ROOT / "tests/fixtures/gemma/mouse_hs1940"))
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    y, names, kernels = mouse_kernels(Path(args.bfile), args.n, args.seed)
    with jax.enable_x64(True):
        y, kernels = jnp.asarray(y), jnp.asarray(kernels)
        X = jnp.ones((y.shape[0], 1))

        def fit(logits):
            return jaxlmm.differentiable_fit(y, X, jaxlmm.mix_kernels(logits, kernels)[None])

        def criterion(logits):
            result = fit(logits)
            return result.criterion, result.heritability

        value_and_grad = jax.jit(jax.value_and_grad(criterion, has_aux=True))
        genome_only = jaxlmm.differentiable_fit(y, X, kernels[:1])
        print(f"device: {jax.devices()[0].device_kind}, dtype: float64; n = {y.shape[0]} mice, "
              f"{len(names)} kernels ({names[0]}, {names[1]} .. {names[-1]})")
        print(f"genome-wide kernel alone: REML criterion {float(genome_only.criterion):.4f}, "
              f"h2 {float(genome_only.heritability):.4f}")

        logits = jnp.zeros(len(names))
        optimizer = optax.adam(args.lr)
        state = optimizer.init(logits)
        jax.block_until_ready(value_and_grad(logits))  # compile
        start = time.perf_counter()
        for step in range(args.steps + 1):
            (value, h2), gradient = value_and_grad(logits)
            if step % 5 == 0 or step == args.steps:
                weights = jax.nn.softmax(logits)
                best = np.argsort(-np.asarray(weights))[:3]
                top = ", ".join(f"{names[j]} {float(weights[j]):.3f}" for j in best)
                print(f"step {step:3d}: REML criterion {float(value):.4f}  h2 {float(h2):.4f}  "
                      f"|gradient| {float(jnp.linalg.norm(gradient)):.3e}  top weights: {top}")
            if step == args.steps:
                break
            updates, state = optimizer.update(gradient, state)
            logits = optax.apply_updates(logits, updates)
        seconds = time.perf_counter() - start
        print(f"{args.steps} outer steps (fit + gradient each): {seconds:.1f} s, {seconds / args.steps:.2f} s per step")

        weights = np.asarray(jax.nn.softmax(logits))
        print("learned weights: " + ", ".join(f"{name} {w:.3f}" for name, w in zip(names, weights)))
        direction = jnp.asarray(np.random.default_rng(1).normal(size=logits.shape))
        h = 1e-4
        difference = (criterion(logits + h * direction)[0] - criterion(logits - h * direction)[0]) / (2 * h)
        print(f"gradient check at the end: <gradient, v> {float(gradient @ direction):+.6e}, central difference of "
              f"refits {float(difference):+.6e}")


if __name__ == "__main__":
    main()
