"""Influence analysis: d h2 / d y_i for every individual, by one reverse-mode pass through the fit.

    python3 bench/influence.py [--bfile tests/fixtures/gemma/mouse_hs1940] [--pheno-col 1] [--top 5]

1. The seed's data (5 individuals, 2 families): ``height ~ 1 + (1|family)`` and ``height ~ variant3 + (1|family)``
   (grouping factor, spectral path).
2. GEMMA's mouse example: phenotype 1 of the HS1940 ``.fam``, intercept only, GEMMA's centred kinship (``-gk 1``:
   variants passing GEMMA's filters on the analyzed samples, then double-centred as GEMMA's ``-lmm`` does), spectral
   path (one ``eigh``, not differentiated).

The heritability is ``h2 = s2_g tr(K)/n / (s2_g tr(K)/n + s2_e)`` (GEMMA's pve for the mouse). For each data set the
script prints h2, the largest |d h2 / d y_i|, and checks the gradient of the most influential individual against a
central difference of two full refits. A boundary fit (family variance 0) is flagged and has zero derivative (the
constrained solution). Timings exclude compilation.
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

import jaxlmm  # noqa: E402
from jaxlmm import structure  # noqa: E402
from jaxlmm.datasets import seed_data  # noqa: E402
from jaxlmm.io.plink import BedReader, read_fam  # noqa: E402
from jaxlmm.kinship import passing_variants, relatedness  # noqa: E402
from jaxlmm.scan import center  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def influence(y, X, basis, label: str, ids, top: int, h: float = 1e-5) -> None:
    """Print h2, d h2 / d y for the most influential individuals, and a refit check of the largest."""
    y, X = jnp.asarray(y), jnp.asarray(X)

    def heritability(y):
        return jaxlmm.differentiable_fit_spectral(y, X, basis).heritability

    value_and_grad = jax.jit(jax.value_and_grad(heritability))
    jax.block_until_ready(value_and_grad(y))
    start = time.perf_counter()
    h2, gradient = jax.block_until_ready(value_and_grad(y))
    seconds = time.perf_counter() - start
    fit = jaxlmm.differentiable_fit_spectral(y, X, basis)
    order = np.argsort(-np.abs(np.asarray(gradient)))
    i = int(order[0])
    refit = (heritability(y.at[i].add(h)) - heritability(y.at[i].add(-h))) / (2 * h)
    print(f"{label}: n = {y.shape[0]}, h2 = {float(h2):.6f}, boundary = {bool(fit.boundary[0])}, "
          f"value-and-gradient {seconds * 1e3:.1f} ms")
    print(f"  sum_i d h2/d y_i = {float(jnp.sum(gradient)):.3e} (0: h2 does not change when y shifts by a constant), "
          f"sum_i y_i d h2/d y_i = {float(y @ gradient):.3e} (0: nor when it is rescaled)")
    for j in order[:top]:
        print(f"  individual {ids[j]!s:>12}: y = {float(y[j]):+.4f}, d h2 / d y = {float(gradient[j]):+.6e}")
    print(f"  refit check, individual {ids[i]}: central difference {float(refit):+.6e}, "
          f"relative difference {abs(float(refit) - float(gradient[i])) / max(abs(float(refit)), 1e-300):.1e}")


def seed(top: int) -> None:
    data = seed_data()
    basis = structure.spectral_basis(structure.group_term(data["family"]))
    ones = np.ones((5, 1))
    ids = data["individual"]
    influence(data["height"], ones, basis, "seed, height ~ 1 + (1|family)", ids, top)
    influence(data["height"], np.c_[ones, data["variant3"]], basis, "seed, height ~ variant3 + (1|family)", ids, top)


def mouse(bfile: Path, pheno_col: int, top: int) -> None:
    reader = BedReader(bfile)
    phenotype = read_fam(str(bfile) + ".fam", column=5 + pheno_col).phenotype  # phenotype 1 is .fam column 6
    analyzed = ~np.isnan(phenotype)
    kinship = relatedness(reader, passing_variants(reader[analyzed, :]))
    kinship = center(kinship[np.ix_(analyzed, analyzed)])
    start = time.perf_counter()
    basis = structure.spectral_basis(structure.kinship_term(kinship))
    print(f"mouse kinship eigendecomposition: {time.perf_counter() - start:.1f} s (once, not differentiated)")
    y = phenotype[analyzed]
    influence(y, np.ones((y.shape[0], 1)), basis, f"mouse HS1940, phenotype {pheno_col}, GEMMA -gk 1 kinship",
              reader.fam.iid[analyzed], top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bfile", default=str(ROOT / "tests/fixtures/gemma/mouse_hs1940"))
    parser.add_argument("--pheno-col", type=int, default=1)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    with jax.enable_x64(True):
        print(f"device: {jax.devices()[0].device_kind}, dtype: float64")
        seed(args.top)
        mouse(Path(args.bfile), args.pheno_col, args.top)


if __name__ == "__main__":
    main()
