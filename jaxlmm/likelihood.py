"""Likelihoods of the linear mixed model, in lme4's units (-2 log L).

Model: ``y = X b + sum_k Z_k u_k + e`` with ``u_k ~ N(0, s2_k G_k)``, ``e ~ N(0, s2_e I)``, so

    V = sum_k s2_k K_k + s2_e I,      K_k = Z_k G_k Z_k'    (n x n).

With ratios ``r_k = s2_k / s2_e`` write ``V = s2_e H`` and ``H = I + sum_k r_k K_k``. Every criterion below
is assembled from the same four *weighted statistics* of the data::

    log|H|,   X'H^-1 X  (p, p),   X'H^-1 y  (p,),   y'H^-1 y.

Given them, ``b = (X'H^-1X)^-1 X'H^-1y`` (BLUE), ``q = y'H^-1y - b'X'H^-1y`` (weighted residual sum of squares), and

    REML criterion (-2 log restricted likelihood, lme4's ``REMLcrit``)
        = (n-p) log(2 pi s2_e) + log|H| + log|X'H^-1X| + q / s2_e
    ML deviance (-2 log likelihood, lme4's ``deviance``)
        = n log(2 pi s2_e) + log|H| + q / s2_e.

Profiling out ``s2_e`` (``s2_e = q/(n-p)`` for REML, ``q/n`` for ML) gives the criteria the optimizer sees:

    REML: log|H| + log|X'H^-1X| + (n-p) (1 + log(2 pi q / (n-p)))
    ML:   log|H| + n (1 + log(2 pi q / n)).

Like lme4 (and unlike some textbooks) the REML criterion carries no ``-log|X'X|`` term.

Two ways to get the weighted statistics:

* **dense** (any number of components): Cholesky ``H = L L'`` and triangular solves, O(n^3) per evaluation;
* **spectral** (one component): with ``K = U diag(s) U'`` the matrix ``H`` is diagonal in the basis ``U``,
  ``H^-1 = U diag(1/(1 + r s)) U' + (I - U U')``. The data are rotated once (``U'[X y]``, plus the Gram
  matrix of the part of ``[X y]`` orthogonal to ``U``), after which one evaluation costs O(m p^2). This is the
  form the variant scan uses.

All functions are pure, jit-able and differentiable. They compute in the dtype of their inputs: enable float64
(``with jax.enable_x64(True):``) for accurate fits; jaxlmm's front doors do so in scope.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve, solve_triangular

LOG_2PI = 1.8378770664093453  # log(2 pi)
METHODS = ("REML", "ML")


class WeightedStats(NamedTuple):
    """The data summaries every criterion is built from, for one value of the variance ratios.

    logdet_h: ()      log|H|
    xhx:      (p, p)  X' H^-1 X
    xhy:      (p,)    X' H^-1 y
    yhy:      ()      y' H^-1 y
    """

    logdet_h: jnp.ndarray
    xhx: jnp.ndarray
    xhy: jnp.ndarray
    yhy: jnp.ndarray


class DenseData(NamedTuple):
    """Data for the dense path.

    y:       (n,)       response
    X:       (n, p)     fixed-effect design
    kernels: (k, n, n)  K_k = Z_k G_k Z_k', one per variance component (the residual is implicit)
    """

    y: jnp.ndarray
    X: jnp.ndarray
    kernels: jnp.ndarray


class SpectralData(NamedTuple):
    """Data for the spectral (single-component) path, rotated once.

    eigenvalues: (m,)          nonzero eigenvalues s of K
    rotated:     (m, p + 1)    U'[X y] (response in the last column)
    null_gram:   (p+1, p+1)    [X y]'(I - U U')[X y], the part of the data K does not reach
    n:           ()            number of observations
    """

    eigenvalues: jnp.ndarray
    rotated: jnp.ndarray
    null_gram: jnp.ndarray
    n: jnp.ndarray


# ----------------------------------------------------------------------------------------------------------------
# weighted statistics


def dense_stats(ratios: jnp.ndarray, data: DenseData) -> WeightedStats:
    """Weighted statistics for ``H = I + sum_k ratios[k] K_k`` by Cholesky. ratios: (k,) >= 0."""
    n = data.y.shape[0]
    h = jnp.eye(n, dtype=data.X.dtype) + jnp.tensordot(ratios, data.kernels, axes=1)
    chol = jnp.linalg.cholesky(h)
    wx = solve_triangular(chol, data.X, lower=True)
    wy = solve_triangular(chol, data.y, lower=True)
    return WeightedStats(
        logdet_h=2.0 * jnp.sum(jnp.log(jnp.diagonal(chol))),
        xhx=wx.T @ wx,
        xhy=wx.T @ wy,
        yhy=wy @ wy,
    )


def spectral_stats(ratio: jnp.ndarray, data: SpectralData) -> WeightedStats:
    """Weighted statistics for ``H = I + ratio * K`` in K's eigenbasis. ratio: () >= 0.

    With weights ``w_i = 1 / (1 + ratio s_i)``: ``[X y]'H^-1[X y] = R' diag(w) R + null_gram`` and
    ``log|H| = -sum_i log w_i``.
    """
    lam_s = ratio * data.eigenvalues
    weights = 1.0 / (1.0 + lam_s)
    # an elementwise product reduced over the m rows: under vmap over a chunk of variants this is one fused pass
    # over the rotated data per evaluation
    d = data.rotated.shape[1]
    rows, cols = np.triu_indices(d)  # the gram is symmetric: reduce only its upper triangle
    weighted = data.rotated.T * weights  # (d, m)
    upper = jnp.sum(weighted[rows] * data.rotated.T[cols], axis=-1)
    gram = jnp.zeros((d, d), upper.dtype).at[rows, cols].set(upper).at[cols, rows].set(upper) + data.null_gram
    return WeightedStats(
        logdet_h=jnp.sum(jnp.log1p(lam_s)),
        xhx=gram[:-1, :-1],
        xhy=gram[:-1, -1],
        yhy=gram[-1, -1],
    )


# ----------------------------------------------------------------------------------------------------------------
# criteria from weighted statistics


class GLS(NamedTuple):
    """Generalized least squares solution at fixed ratios.

    beta:        (p,)  BLUE of the fixed effects
    xhx_chol:    (p,p) lower Cholesky factor of X'H^-1X
    q:           ()    weighted residual sum of squares (y - Xb)'H^-1(y - Xb)
    logdet_xhx:  ()    log|X'H^-1X|
    """

    beta: jnp.ndarray
    xhx_chol: jnp.ndarray
    q: jnp.ndarray
    logdet_xhx: jnp.ndarray


def gls(stats: WeightedStats) -> GLS:
    """Solve the GLS normal equations ``X'H^-1X b = X'H^-1y``."""
    chol = jnp.linalg.cholesky(stats.xhx)
    beta = cho_solve((chol, True), stats.xhy)
    return GLS(
        beta=beta,
        xhx_chol=chol,
        q=stats.yhy - stats.xhy @ beta,
        logdet_xhx=2.0 * jnp.sum(jnp.log(jnp.diagonal(chol))),
    )


def residual_df(n, p: int, method: str):
    """Degrees of freedom dividing q in the profiled residual variance: n - p (REML) or n (ML)."""
    _check_method(method)
    return n - p if method == "REML" else n


def criterion_from_stats(stats: WeightedStats, n, s2_e, method: str) -> jnp.ndarray:
    """-2 log (restricted) likelihood at residual variance ``s2_e`` (see module docstring)."""
    _check_method(method)
    sol = gls(stats)
    p = stats.xhy.shape[0]
    if method == "REML":
        return (n - p) * (LOG_2PI + jnp.log(s2_e)) + stats.logdet_h + sol.logdet_xhx + sol.q / s2_e
    return n * (LOG_2PI + jnp.log(s2_e)) + stats.logdet_h + sol.q / s2_e


def profiled_criterion_from_stats(stats: WeightedStats, n, method: str) -> jnp.ndarray:
    """-2 log (restricted) likelihood with ``s2_e`` at its optimum ``q / residual_df``."""
    _check_method(method)
    sol = gls(stats)
    p = stats.xhy.shape[0]
    df = residual_df(n, p, method)
    value = stats.logdet_h + df * (1.0 + LOG_2PI + jnp.log(sol.q / df))
    return value + sol.logdet_xhx if method == "REML" else value


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------------------------------------
# the likelihoods users and the optimizer call


def dense_criterion(log_variances: jnp.ndarray, data: DenseData, method: str = "REML") -> jnp.ndarray:
    """-2 log L of ``V = sum_k s2_k K_k + s2_e I``.

    log_variances: (k + 1,) ``log s2_1 .. log s2_k, log s2_e`` (residual last).
    Returns lme4's REML criterion (method="REML") or deviance (method="ML").
    """
    variances = jnp.exp(log_variances)
    s2_e = variances[-1]
    stats = dense_stats(variances[:-1] / s2_e, data)
    return criterion_from_stats(stats, data.y.shape[0], s2_e, method)


def dense_profiled_criterion(log_ratios: jnp.ndarray, data: DenseData, method: str = "REML") -> jnp.ndarray:
    """-2 log L profiled over ``b`` and ``s2_e``; log_ratios: (k,) ``log(s2_k / s2_e)``."""
    return profiled_criterion_from_stats(dense_stats(jnp.exp(log_ratios), data), data.y.shape[0], method)


def spectral_criterion(log_variances: jnp.ndarray, data: SpectralData, method: str = "REML") -> jnp.ndarray:
    """-2 log L of ``V = s2_u K + s2_e I`` in K's eigenbasis; log_variances: (2,) ``(log s2_u, log s2_e)``."""
    variances = jnp.exp(log_variances)
    stats = spectral_stats(variances[0] / variances[1], data)
    return criterion_from_stats(stats, data.n, variances[1], method)


def spectral_profiled_criterion(log_ratio: jnp.ndarray, data: SpectralData, method: str = "REML") -> jnp.ndarray:
    """-2 log L profiled over ``b`` and ``s2_e``; log_ratio: () or (1,) ``log(s2_u / s2_e)`` (GEMMA's log lambda)."""
    return spectral_profiled_criterion_at_ratio(jnp.exp(log_ratio), data, method)


def spectral_profiled_criterion_at_ratio(ratio: jnp.ndarray, data: SpectralData, method: str = "REML") -> jnp.ndarray:
    """The same on the ratio scale; ratio: () or (1,) ``s2_u / s2_e >= 0`` (0 allowed: the boundary)."""
    return profiled_criterion_from_stats(spectral_stats(jnp.reshape(ratio, ()), data), data.n, method)
