"""Estimates at fitted variance parameters: BLUE, BLUP, their variances, and the share of variance explained.

Everything is expressed through ``hinv(A) = H^-1 A`` with ``V = s2_e H`` (see :mod:`jaxlmm.likelihood`), so the
same formulas serve the dense and the spectral paths:

    b       = (X'H^-1X)^-1 X'H^-1 y                         BLUE
    cov(b)  = s2_e (X'H^-1X)^-1                             (lme4's ``vcov``)
    u_k     = r_k G_k Z_k' H^-1 (y - X b)                   BLUP (= s2_k G_k Z_k' V^-1 (y - Xb))
    condvar = s2_e diag(r_k G_k - r_k^2 G_k Z_k' H^-1 Z_k G_k)     lme4's ``condVar``: Var(u | y), b known
    pev     = condvar + s2_e r_k^2 diag(B (X'H^-1X)^-1 B'),  B = G_k Z_k' H^-1 X
                                                            prediction-error variance Var(u - u_hat), b estimated
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve


class FixedEffects(NamedTuple):
    """BLUE and its sampling distribution.

    beta:  (p,)   estimates
    cov:   (p, p) s2_e (X'H^-1X)^-1
    se:    (p,)   standard errors sqrt(diag(cov))
    t:     (p,)   beta / se
    hinv_residual: (n,) H^-1 (y - X b), reused by the BLUPs
    xhx_chol:      (p, p) lower Cholesky factor of X'H^-1X
    hinv_x:        (n, p) H^-1 X
    """

    beta: jnp.ndarray
    cov: jnp.ndarray
    se: jnp.ndarray
    t: jnp.ndarray
    hinv_residual: jnp.ndarray
    xhx_chol: jnp.ndarray
    hinv_x: jnp.ndarray


class RandomEffects(NamedTuple):
    """BLUPs of one term. blup, condvar, pev: (q,) (see module docstring)."""

    blup: jnp.ndarray
    condvar: jnp.ndarray
    pev: jnp.ndarray


def fixed_effects(y: jnp.ndarray, X: jnp.ndarray, hinv: Callable, s2_e) -> FixedEffects:
    """BLUE of ``b`` with covariance ``s2_e (X'H^-1X)^-1``. y: (n,), X: (n, p)."""
    hinv_xy = hinv(jnp.concatenate([X, y[:, None]], axis=1))
    hinv_x, hinv_y = hinv_xy[:, :-1], hinv_xy[:, -1]
    xhx = X.T @ hinv_x
    xhx = 0.5 * (xhx + xhx.T)
    chol = jnp.linalg.cholesky(xhx)
    beta = cho_solve((chol, True), X.T @ hinv_y)
    cov = s2_e * cho_solve((chol, True), jnp.eye(X.shape[1], dtype=X.dtype))
    se = jnp.sqrt(jnp.diagonal(cov))
    return FixedEffects(beta, cov, se, beta / se, hinv_y - hinv_x @ beta, chol, hinv_x)


def random_effects(Z, G, ratio, s2_e, fixed: FixedEffects, hinv: Callable) -> RandomEffects:
    """BLUP, conditional variance and prediction-error variance of one term. Z: (n, q), G: (q, q), ratio = s2/s2_e."""
    Z = jnp.asarray(Z)
    G = jnp.asarray(G)
    zg = Z @ G
    blup = ratio * (zg.T @ fixed.hinv_residual)
    hinv_zg = hinv(zg)
    condvar = s2_e * (ratio * jnp.diagonal(G) - ratio**2 * jnp.sum(zg * hinv_zg, axis=0))
    b = zg.T @ fixed.hinv_x  # (q, p) = G Z' H^-1 X
    half = jnp.linalg.solve(fixed.xhx_chol, b.T)  # L^-1 B'
    pev = condvar + s2_e * ratio**2 * jnp.sum(half * half, axis=0)
    return RandomEffects(blup, condvar, pev)


def fixed_effect_variance(X: np.ndarray, beta: np.ndarray) -> float:
    """Variance of the fixed-effect predictor, ``var(X b)`` with the n - 1 denominator, as the seed computes it.

    The intercept (a constant column) adds nothing to it, so this equals var(X_nonintercept b_nonintercept).
    """
    return float(np.var(np.asarray(X) @ np.asarray(beta), ddof=1))


def variance_explained(fixed_variance: float, random_variances: dict, residual_variance: float) -> dict:
    """PVE as the seed defines it: each part divided by ``fixed + sum(random) + residual``.

    random_variances: name -> variance contributed on the phenotype scale (``s2_k tr(K_k)/n``; for a grouping factor
    tr(K)/n = 1, so it is ``s2_k`` itself, the seed's family variance).
    Returns name -> share in [0, 1] with keys "fixed", each random term, "residual".
    """
    parts = {"fixed": fixed_variance, **random_variances, "residual": residual_variance}
    total = sum(parts.values())
    return {name: value / total for name, value in parts.items()}
