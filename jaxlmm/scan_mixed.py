"""The variant scan on general random effects (random slopes, crossed/nested factors, kinship beside them).

For every variant j: ``y ~ covariates + x_j + random effects`` by REML (Wald test) and ML (likelihood-ratio test
against the null model), with the PLS likelihood of :mod:`jaxlmm.pls`. No single eigendecomposition diagonalizes these
models, so each variant is a full L-BFGS fit over theta; the fit is written for one variant and ``vmap`` ped over the
variants of a chunk under one ``jit``. Only the data cross-products that involve ``x_j`` change between variants
(``Z'x_j`` by segment sums, ``[C x_j y]'[C x_j y]``), the rest (``Z'Z``) is shared.

Every variant starts from the null model's theta and keeps the null model's boundary pattern (a random-effect
diagonal pinned at 0 in the null REML/ML fit stays at 0). Tests, as in :mod:`jaxlmm.scan`:

* Wald: ``beta / se``, ``se^2 = s2 [(X'H^-1X)^-1]_xx`` at the REML fit, ``s2 = q / (n - c - 1)``; F(1, n - c - 1).
* LRT: ``deviance_null - deviance_j`` of the ML fits against chi-square(1).

Columns: variant, phenotype, n_miss, af, beta, se, wald, p_wald, p_lrt, logl_remle, logl_mle, converged, iterations,
status (filtering by missingness / MAF / monomorphism as in :mod:`jaxlmm.scan`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from . import validate
from .likelihood import gls
from .mixed import _FAST_COMPILE, MixedFit, fit_mixed
from .optimize import minimize
from .pls import (
    Layout,
    PLSData,
    PLSObjective,
    ThetaTransform,
    dense_part,
    empty_block,
    pls_data,
    pls_factor,
    z_cross,
)
from .pvalues import chi2_1_sf, f1_sf
from .reterms import blocks_from_frame, kinship_block, order_blocks, split_random
from .scan import ScanResult, _column_chunks, _impute

COLUMNS = ("variant", "phenotype", "n_miss", "af", "beta", "se", "wald", "p_wald", "p_lrt", "logl_remle",
           "logl_mle", "converged", "iterations", "status")


def random_blocks(terms: str, data, kinship=None) -> list:
    """Blocks for :func:`scan_mixed` from lme4 random-effect terms, e.g. ``"(1 + age | family) + (1 | batch)"``,
    evaluated on a table with one row per sample; ``kinship`` (n, n) adds a kinship block."""
    import pandas as pd

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    _, specs = split_random(terms)
    blocks = blocks_from_frame(specs, frame)
    if kinship is not None:
        blocks.append(kinship_block(kinship))
    if not blocks:
        raise validate.InputError(f"no random-effect term in {terms!r} and no kinship")
    return order_blocks(blocks)


def _start(fit: MixedFit, layout: Layout):
    """Unconstrained start and free mask from a null fit's theta (pinned diagonals stay pinned)."""
    diagonal = layout.theta_is_diagonal()
    free = ~(diagonal & (fit.theta == 0.0))
    params = np.where(diagonal, np.log(np.where(free, fit.theta, 1.0)), fit.theta)
    return jnp.asarray(params), jnp.asarray(free)


@partial(jax.jit, static_argnames=("layout", "max_iter"), compiler_options=_FAST_COMPILE)
def _fit_chunk(z1d, z2d, dd, shared: PLSData, starts, null_deviance_ml, layout: Layout, max_iter: int):
    """Per-variant REML and ML fits, vmapped over the chunk axis of z1d (b, l1, k1, d), z2d (b, q2, d), dd (b, d, d)."""
    objective = PLSObjective(layout)
    transform = ThetaTransform(tuple(bool(v) for v in layout.theta_is_diagonal()))
    (reml_params, reml_free), (ml_params, ml_free) = starts

    def one(z1d_j, z2d_j, dd_j):
        data = shared._replace(z1d=z1d_j, z2d=z2d_j, dd=dd_j)
        reml = minimize(objective, reml_params, reml_free, (data, True), max_iter=max_iter, transform=transform)
        ml = minimize(objective, ml_params, ml_free, (data, False), max_iter=max_iter, transform=transform)
        sol = gls(pls_factor(transform(reml.params, reml_free), data, layout).stats)
        p = sol.beta.shape[0]
        s2 = sol.q / (data.n - p)
        unit = jnp.zeros(p, sol.beta.dtype).at[-1].set(1.0)
        se = jnp.sqrt(s2 * cho_solve((sol.xhx_chol, True), unit)[-1])
        wald = (sol.beta[-1] / se) ** 2
        lrt = null_deviance_ml - ml.value
        return {
            "beta": sol.beta[-1], "se": se, "wald": wald, "p_wald": f1_sf(wald, data.n - p),
            "p_lrt": chi2_1_sf(lrt), "logl_remle": -reml.value / 2, "logl_mle": -ml.value / 2,
            "converged": reml.converged & ml.converged, "iterations": reml.iterations + ml.iterations,
        }

    return jax.vmap(one)(z1d, z2d, dd)


def scan_mixed(y, genotypes, covariates=None, *, blocks: list, intercept: bool = True, chunk_size: int = 64,
               min_maf: float = 0.01, max_missing: float = 0.05, max_iter: int = 100, variant_names=None) -> ScanResult:
    """Fit ``y ~ covariates + variant_j + random effects`` for every variant j (see module docstring).

    y: (n,); genotypes: (n, M) array-like or iterable of (n, b) chunks (NaN = missing, mean-imputed);
    covariates: (n, c0) or None (intercept prepended unless ``intercept=False``); blocks: from :func:`random_blocks`.
    Returns a :class:`jaxlmm.scan.ScanResult` whose ``null`` is the null model's REML :class:`MixedFit`.
    """
    y = validate.response(np.asarray(y, dtype=float))
    n = y.shape[0]
    cov = np.zeros((n, 0)) if covariates is None else np.asarray(covariates, dtype=float)
    cov = cov[:, None] if cov.ndim == 1 else cov
    names = [f"covariate{j + 1}" for j in range(cov.shape[1])]
    if intercept:
        cov, names = np.c_[np.ones(n), cov], ["(Intercept)", *names]
    cov = validate.design(cov, n, names, what="covariates")
    blocks = order_blocks(list(blocks))
    null_reml = fit_mixed(y, cov, names, blocks, "REML", max_iter=max_iter)
    null_ml = fit_mixed(y, cov, names, blocks, "ML", max_iter=max_iter)
    with jax.enable_x64(True):
        columns = _scan(y, cov, blocks, genotypes, null_reml, null_ml, chunk_size, min_maf, max_missing, max_iter)
    M = columns["beta"].shape[0]
    variants = np.asarray(variant_names) if variant_names is not None else np.array([f"v{j + 1}" for j in range(M)])
    if variants.shape[0] != M:
        raise validate.InputError(f"{variants.shape[0]} variant names for {M} variants")
    columns = {"variant": variants, "phenotype": np.ones(M, dtype=int), **columns}
    return ScanResult({k: columns[k] for k in COLUMNS}, null_reml, n, cov.shape[1])


def _scan(y, cov, blocks, genotypes, null_reml, null_ml, chunk_size, min_maf, max_missing, max_iter) -> dict:
    if blocks[0].factor is not None:
        blocks = [empty_block()] + blocks
    shared, layout = pls_data(blocks, np.c_[cov, np.zeros(y.shape[0])], y)  # x_j's column filled per variant
    z2 = dense_part(blocks)
    base = np.c_[cov, y]
    z1_base, z2_base = z_cross(blocks[0], z2, base)
    starts = (_start(null_reml, layout), _start(null_ml, layout))
    pieces = []
    for chunk in _column_chunks(genotypes, chunk_size):
        imputed, n_miss, af, status = _impute(chunk, max_missing, min_maf)
        out = {k: np.full(chunk.shape[1], np.nan) for k in ("beta", "se", "wald", "p_wald", "p_lrt", "logl_remle",
                                                            "logl_mle", "converged", "iterations")}
        ok = np.flatnonzero(status == "ok")
        if ok.size:
            pick = np.concatenate([ok, np.full((-ok.size) % chunk_size, ok[0])])  # fixed batch: one compilation
            x = imputed[:, pick]
            z1x, z2x = z_cross(blocks[0], z2, x)
            c = cov.shape[1]
            z1d = np.concatenate([np.broadcast_to(z1_base[None, :, :, :c], (x.shape[1],) + z1_base[..., :c].shape),
                                  np.moveaxis(z1x, 2, 0)[..., None],
                                  np.broadcast_to(z1_base[None, :, :, c:], (x.shape[1],) + z1_base[..., c:].shape)],
                                 axis=-1)
            z2d = np.concatenate([np.broadcast_to(z2_base[None, :, :c], (x.shape[1],) + z2_base[:, :c].shape),
                                  z2x.T[:, :, None],
                                  np.broadcast_to(z2_base[None, :, c:], (x.shape[1],) + z2_base[:, c:].shape)], axis=-1)
            full = np.concatenate([np.broadcast_to(cov, (x.shape[1],) + cov.shape), x.T[:, :, None],
                                   np.broadcast_to(y[:, None], (x.shape[1], y.size, 1))], axis=-1)
            dd = np.einsum("bni,bnj->bij", full, full)
            fits = _fit_chunk(jnp.asarray(z1d), jnp.asarray(z2d), jnp.asarray(dd), shared, starts,
                              jnp.asarray(null_ml.criterion), layout, max_iter)
            for k, v in fits.items():
                out[k][ok] = np.asarray(v)[:ok.size]
            converged = out["converged"][ok].astype(bool)
            status[ok[~converged]] = "not_converged"
        out["n_miss"], out["af"], out["status"] = n_miss, af, status
        pieces.append(out)
    columns = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    columns["converged"] = np.nan_to_num(columns["converged"]).astype(bool)
    columns["iterations"] = np.nan_to_num(columns["iterations"]).astype(int)
    columns["status"] = columns["status"].astype(str)
    return columns
