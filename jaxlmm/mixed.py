"""Fitting general linear mixed models (random slopes, crossed and nested factors, kinship) by PLS, like lme4.

:func:`fit_mixed` minimizes the profiled REML criterion or ML deviance of :mod:`jaxlmm.pls` over lme4's ``theta``
(relative Cholesky factors; diagonal entries on a log scale, off-diagonal entries free) with optax L-BFGS
(:func:`jaxlmm.optimize.minimize`), starting at lme4's start (``T_b = I``).

Boundaries: a log scale never reaches a diagonal of 0. A diagonal entry that ends below BOUNDARY_THETA is pinned at
exactly 0 and the rest refitted; the pin is kept when the criterion is no worse (relative 1e-10), and the fit is
flagged singular like lme4's ``isSingular`` (some diagonal of theta below 1e-4).

Results are host numpy values in a :class:`MixedFit`; computation runs in float64 inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from .likelihood import gls
from .optimize import DEFAULT_MAX_ITER, minimize
from .pls import (
    LOG_THETA_MAX,
    Layout,
    PLSObjective,
    ThetaTransform,
    conditional_covariances,
    conditional_modes,
    dense_inverse_block,
    empty_block,
    pls_criterion,
    pls_data,
    pls_factor,
    relative_factors,
)
from .reterms import ReBlock, order_blocks

BOUNDARY_THETA = 1e-2  # diagonal theta entries ending below this are tried at exactly 0
SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on the diagonal of theta
# Every model shape compiles its own optimizer loop. Lowering XLA's backend optimization level halved that compile
# time but crashed XLA:CPU (segfault while compiling, seen twice in full test-suite runs), so the defaults are kept.
_FAST_COMPILE = {}
_minimize = jax.jit(minimize.__wrapped__, static_argnames=("objective", "max_iter", "transform"),
                    compiler_options=_FAST_COMPILE)


class MixedFit(NamedTuple):
    """A fitted general linear mixed model (host numpy values).

    method:          "REML" or "ML"
    formula:         the model formula ("" when fitted from arrays)
    fixef_names:     (p,) fixed-effect names; fixef, se, tvalue: (p,); fixef_cov: (p, p) s2 (X'H^-1X)^-1
    groups:          (B,) grouping factor of each random-effect block (a factor may have several blocks: (x||g))
    columns:         (B,) tuples of coefficient names per block
    levels:          (B,) tuples of level labels per block (sample ids for a kinship block)
    covariances:     (B,) arrays (k_b, k_b): s2 T_b T_b', the random-effect covariance of a level
    residual_variance: s2
    theta:           (n_theta,) lme4's theta (column-major lower triangles of the T_b)
    ranef:           (B,) arrays (l_b, k_b) conditional modes (BLUPs; for a kinship block the genetic value per sample)
    ranef_condvar:   (B,) arrays (l_b, k_b, k_b) conditional covariances (lme4's condVar)
    criterion:       REML criterion (REML) or deviance (ML), -2 log L; loglik = -criterion / 2
    fitted, residuals: (n,) X b + Z B and y - fitted
    n, p:            observations and fixed effects; n_theta: covariance parameters
    singular:        some diagonal of theta below SINGULAR_TOL (lme4's isSingular)
    converged, iterations, gradient (n_theta,), start_criterion: how the optimizer got there
    variance_parts, pve: name -> variance on the phenotype scale ("fixed": var(Xb); each group: mean_i z_i' S z_i;
                         "residual") and its share of the total
    messages:        diagnostics (singular fit, non-convergence)
    model:           what predict needs (fixed-effect model spec, block specs); None when fitted from arrays
    """

    method: str
    formula: str
    fixef_names: tuple
    fixef: np.ndarray
    se: np.ndarray
    tvalue: np.ndarray
    fixef_cov: np.ndarray
    groups: tuple
    columns: tuple
    levels: tuple
    covariances: tuple
    residual_variance: float
    theta: np.ndarray
    ranef: tuple
    ranef_condvar: tuple
    criterion: float
    loglik: float
    fitted: np.ndarray
    residuals: np.ndarray
    n: int
    p: int
    n_theta: int
    singular: bool
    converged: bool
    iterations: int
    gradient: np.ndarray
    start_criterion: float
    variance_parts: dict
    pve: dict
    messages: tuple
    model: object = None


@partial(jax.jit, static_argnames="layout", compiler_options=_FAST_COMPILE)
def _estimates(theta, data, layout: Layout, reml):
    """Everything a fit reports at theta, in one compiled program (``reml`` traced, so REML and ML share it): the
    factor, b, s2, the criterion, cov(b), conditional modes and covariances (per block) and the relative factors."""
    factor = pls_factor(theta, data, layout)
    sol = gls(factor.stats)
    p = sol.beta.shape[0]
    s2 = sol.q / (data.n - jnp.where(reml, p, 0))
    cov = s2 * cho_solve((sol.xhx_chol, True), jnp.eye(p, dtype=theta.dtype))
    return (factor, sol.beta, s2, pls_criterion(theta, data, layout, reml), cov,
            conditional_modes(factor, theta, layout, sol.beta), conditional_covariances(factor, theta, layout, s2),
            relative_factors(theta, layout))


def _optimize(data, layout: Layout, reml: bool, max_iter: int, start=None):
    """Active-set loop over the diagonal entries of theta. Returns (theta, free, result, iterations)."""
    is_diagonal = layout.theta_is_diagonal()
    objective, transform = PLSObjective(layout), ThetaTransform(tuple(bool(v) for v in is_diagonal))
    free = np.ones(layout.n_theta, dtype=bool)
    params = jnp.zeros(layout.n_theta) if start is None else jnp.asarray(start)  # lme4's start: T_b = I
    args = (data, jnp.asarray(reml))
    result = _minimize(objective, params, jnp.asarray(free), args, max_iter=max_iter, transform=transform)
    iterations = int(result.iterations)
    for _ in range(int(is_diagonal.sum())):
        theta = np.asarray(transform(result.params, jnp.asarray(free)))
        candidates = [j for j in np.flatnonzero(is_diagonal & free) if theta[j] < BOUNDARY_THETA]
        if not candidates:
            break
        j = min(candidates, key=lambda i: theta[i])
        trial_free = free.copy()
        trial_free[j] = False
        trial = _minimize(objective, result.params, jnp.asarray(trial_free), args, max_iter=max_iter,
                         transform=transform)
        iterations += int(trial.iterations)
        value = float(result.value)
        if float(trial.value) > value + 1e-10 * (1.0 + abs(value)):
            break
        free, result = trial_free, trial
    theta = np.asarray(transform(result.params, jnp.asarray(free)))
    return theta, free, result, iterations


def fit_mixed(y: np.ndarray, X: np.ndarray, fixef_names, blocks: list, method: str = "REML", *,
              max_iter: int = DEFAULT_MAX_ITER, formula: str = "", model=None) -> MixedFit:
    """Fit ``y = X b + sum_b Z_b B_b + e`` by REML or ML (validated inputs; see :func:`jaxlmm.lmer.lmer`).

    y: (n,), X: (n, p) with its intercept column, blocks: :class:`jaxlmm.reterms.ReBlock` s (any order).
    """
    with jax.enable_x64(True):
        return _fit(np.asarray(y, float), np.asarray(X, float), tuple(fixef_names), order_blocks(blocks), method,
                    max_iter, formula, model)


def _fit(y, X, names, blocks, method, max_iter, formula, model) -> MixedFit:
    n, p = X.shape
    shown = list(blocks)
    if blocks[0].factor is not None:  # only kernels: an empty grouping block heads the blocked factorization
        blocks = [empty_block()] + blocks
    data, layout = pls_data(blocks, X, y)
    theta, free, result, iterations = _optimize(data, layout, method == "REML", max_iter)
    theta_j = jnp.asarray(theta)
    estimates = _estimates(theta_j, data, layout, jnp.asarray(method == "REML"))
    factor = estimates[0]
    beta, s2, criterion, cov, modes, condvars, factors = jax.tree.map(np.asarray, estimates[1:])
    s2, criterion = float(s2), float(criterion)
    se = np.sqrt(np.diag(cov))
    if len(blocks) > len(shown):
        modes, condvars, factors = modes[1:], condvars[1:], factors[1:]
    random_part = np.zeros(n)
    ranef, ranef_condvar, parts = [], [], {}
    for block, mode, condvar, T in zip(shown, modes, condvars, factors):
        S = s2 * T @ T.T
        if block.factor is None:
            random_part += np.sum(block.values * mode[block.codes], axis=1)
            ranef.append(mode)
            ranef_condvar.append(condvar)
            share = float(np.mean(np.einsum("ia,ab,ib->i", block.values, S, block.values)))
        else:  # genetic values g = F B and diag(Var(g | y)) = s2 theta^2 diag(F A^-1 F')
            F = block.factor
            g = F @ mode[:, 0]
            random_part += g
            at = _dense_offset(blocks, block)
            inv = np.asarray(dense_inverse_block(factor, at, at + F.shape[1]))
            ranef.append(g[:, None])
            ranef_condvar.append((S[0, 0] * np.einsum("ia,ab,ib->i", F, inv, F))[:, None, None])
            share = float(S[0, 0] * np.sum(F * F) / n)
        parts[block.group] = parts.get(block.group, 0.0) + share
    fitted = X @ beta + random_part
    diagonal = layout.theta_is_diagonal()
    singular = bool(np.any(theta[diagonal] < SINGULAR_TOL))
    messages = []
    if singular:
        messages.append("boundary (singular) fit: see help('isSingular')")
    if np.any(theta[diagonal] >= np.exp(LOG_THETA_MAX) * (1 - 1e-12)):
        messages.append("boundary fit: the residual variance is (nearly) 0 relative to the random effects "
                        f"(theta reached its cap e^{LOG_THETA_MAX:g})")
    if not bool(result.converged):
        messages.append(f"optimizer did not converge in {max_iter} iterations")
    variance_parts = {"fixed": float(np.var(X @ beta, ddof=1)), **parts, "residual": s2}
    total = sum(variance_parts.values())
    return MixedFit(
        method=method, formula=formula, fixef_names=names, fixef=beta, se=se, tvalue=beta / se, fixef_cov=cov,
        groups=tuple(b.group for b in shown), columns=tuple(b.columns for b in shown),
        levels=tuple(b.levels for b in shown),
        covariances=tuple(s2 * T @ T.T for T in factors), residual_variance=s2,
        theta=theta,
        ranef=tuple(ranef), ranef_condvar=tuple(ranef_condvar), criterion=criterion, loglik=-criterion / 2.0,
        fitted=fitted, residuals=y - fitted, n=n, p=p, n_theta=layout.n_theta, singular=singular,
        converged=bool(result.converged), iterations=iterations,
        gradient=np.where(free, np.asarray(result.gradient), 0.0), start_criterion=float(result.start),
        variance_parts=variance_parts, pve={k: v / total for k, v in variance_parts.items()},
        messages=tuple(messages), model=model,
    )


def _dense_offset(blocks: list, block: ReBlock) -> int:
    """Column of A's dense part (blocks 1..) where ``block`` starts."""
    at = 0
    for b in blocks[1:]:
        if b is block:
            return at
        at += b.size[0] * b.size[1]
    raise ValueError("block not in the dense part")
