"""Cost of a gradient through a fit: time of value-and-gradient vs time of the fit alone, in one process.

    python3 bench/differentiable_timing.py [--n-dense 800] [--n-spectral 3000] [--repeats 5]

Two problems, simulated: the dense path (``jaxlmm.differentiable_fit``, kernel ``softmax(a)_1 K_1 + softmax(a)_2 K_2``
plus observation weights; gradient of the REML criterion at the optimum plus the heritability with respect to y, X,
the kernel logits a and the weights) and the spectral path (``jaxlmm.differentiable_fit_spectral``, eigenbasis of a
fixed kinship computed beforehand; gradient of the heritability with respect to y and X, and to y alone). On the
spectral path the fit's cost is mostly the rotation ``U'[X y]`` (O(n^2 p)), and the gradient with respect to X needs
its adjoint ``U (.)``, as costly again: that ratio tends to 2 for large n. All functions are jitted
and run once before timing (compile time excluded); each timing is the best of ``--repeats`` runs, with
``block_until_ready``. Prints device, dtype, sizes, seconds and the ratio (target: at most 2).

OpenBLAS (behind LAPACK's Cholesky and eigh on CPU) is limited to one thread unless OPENBLAS_NUM_THREADS is set: on a
small shared machine its spinning threads made a 300 x 300 Cholesky take 0.5 s instead of 1 ms.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS (see the module docstring)

import jax
import jax.numpy as jnp
import numpy as np

import jaxlmm
from jaxlmm import structure


def best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def simulated(rng, n: int, markers: int = 2000):
    """y (n,), X (n, 3), two centred relatedness kernels from simulated genotypes, weights (n,)."""
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, size=2 * markers), size=(n, 2 * markers)).astype(float)
    genotypes -= genotypes.mean(axis=0)
    kernels = np.stack([g @ g.T / markers for g in (genotypes[:, :markers], genotypes[:, markers:])])
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    effects = genotypes[:, :markers] @ rng.normal(scale=np.sqrt(0.5 / markers), size=markers)
    y = X @ np.array([1.0, 0.5, -0.3]) + effects + rng.normal(scale=np.sqrt(0.5), size=n)
    return y, X, kernels, rng.uniform(0.5, 2.0, size=n)


def dense_case(rng, n: int, repeats: int):
    y, X, kernels, weights = map(jnp.asarray, simulated(rng, n))
    logits = jnp.zeros(2)

    def fit(y, X, logits, weights):
        return jaxlmm.differentiable_fit(y, X, jaxlmm.mix_kernels(logits, kernels)[None], weights)

    def objective(y, X, logits, weights):
        result = fit(y, X, logits, weights)
        return result.criterion + result.heritability

    fit_only = jax.jit(lambda *a: fit(*a).criterion)
    value_and_grad = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2, 3)))
    args = (y, X, logits, weights)
    return best_time(fit_only, *args, repeats=repeats), best_time(value_and_grad, *args, repeats=repeats)


def spectral_case(rng, n: int, repeats: int, argnums=(0, 1)):
    y, X, kernels, _ = simulated(rng, n)
    basis = structure.spectral_basis(structure.kinship_term(kernels[0]))
    y, X = jnp.asarray(y), jnp.asarray(X)

    def heritability(y, X):
        return jaxlmm.differentiable_fit_spectral(y, X, basis).heritability

    fit_only = jax.jit(heritability)
    value_and_grad = jax.jit(jax.value_and_grad(heritability, argnums=argnums))
    return best_time(fit_only, y, X, repeats=repeats), best_time(value_and_grad, y, X, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-dense", type=int, default=800)
    parser.add_argument("--n-spectral", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype: float64, "
              f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
        cases = (("dense, d/d(y, X, a, w)", dense_case, args.n_dense),
                 ("spectral, d/d(y, X)", spectral_case, args.n_spectral),
                 ("spectral, d/dy", partial(spectral_case, argnums=0), args.n_spectral))
        for name, case, n in cases:
            fit_seconds, grad_seconds = case(rng, n, args.repeats)
            print(f"{name:24s} n={n:5d}: fit {fit_seconds * 1e3:9.1f} ms   value-and-gradient "
                  f"{grad_seconds * 1e3:9.1f} ms   ratio {grad_seconds / fit_seconds:5.2f}")


if __name__ == "__main__":
    main()
