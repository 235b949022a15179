"""Penalized least squares (PLS) form of the linear mixed model, as in lme4 and MixedModels.jl (Bates et al. 2015).

Model: ``y = X b + Z B + e``, ``B = Lambda(theta) U``, ``U ~ N(0, s2 I_q)``, ``e ~ N(0, s2 I_n)``, so the random effects
have covariance ``s2 Lambda Lambda'`` and ``V = s2 H`` with ``H = I_n + Z Lambda Lambda' Z'``. The random effects come in
*blocks*: block ``b`` has ``l_b`` levels and ``k_b`` coefficients per level (``(1 + x|g)``: k = 2), its columns of ``Z``
are level-major (level j, coefficient c at column ``j k_b + c``) and ``Lambda`` restricted to it is
``I_{l_b} (x) T_b`` with ``T_b`` a lower-triangular ``k_b x k_b`` relative Cholesky factor. ``theta`` lists the lower
triangles column by column (lme4's order); diagonal entries are >= 0.

The q x q system ``A = Lambda'Z'Z Lambda + I_q = L L'`` replaces the n x n matrix H:

    log|H| = log|A|                                   (Sylvester)
    [X y]'H^-1[X y] = [X y]'[X y] - C'C,  C = L^-1 Lambda'Z'[X y]      (Woodbury)

and these are :class:`jaxlmm.likelihood.WeightedStats`, from which the profiled REML criterion / ML deviance follow
exactly as on the dense path (``q = y'H^-1y - b'X'H^-1y`` is lme4's penalized residual sum of squares).

Blocked Cholesky (MixedModels.jl): block 0 (the grouping factor with the most levels) has ``Z_1'Z_1`` block-diagonal,
one ``k_1 x k_1`` block per level, so with ``A = [[A11, A21'], [A21, A22]]``

    L11 = chol(A11)                level by level, O(l_1 k_1^3)
    L21 = A21 L11^-T               (q_2, q_1), level by level
    L22 = chol(A22 - L21 L21')     dense (q_2, q_2): the other blocks together

so thousands of levels of the first factor cost O(l_1) and nothing is n x n. A kinship term enters as a block with
``Z = F`` (``K = F F'``, F the eigenvectors scaled by sqrt(eigenvalues)), one level per column of F, ``k = 1``; it is part
of the dense block, which then costs O(n^3) like the dense-V path.

Everything here is pure, jit-able and differentiable in theta; compute in float64 (``jax.enable_x64``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular

from .likelihood import WeightedStats, profiled_criterion_from_stats
from .reterms import ReBlock, dense_z

LOG_THETA_MAX = 7.0  # theta diagonal <= e^7 ~ 1100: random SD / residual SD, variance ratio ~1.2e6


class Layout(NamedTuple):
    """Static shape of the random effects (hashable, so jit specializes on it).

    sizes:  ((l_b, k_b), ...) levels and coefficients per block; block 0 is the blocked (first) factor
    """

    sizes: tuple

    @property
    def n_theta(self) -> int:
        return sum(k * (k + 1) // 2 for _, k in self.sizes)

    def theta_is_diagonal(self) -> np.ndarray:
        """(n_theta,) bool: which theta entries are diagonal elements of some T_b."""
        return np.concatenate([np.array([r == c for c in range(k) for r in range(c, k)], dtype=bool)
                               for _, k in self.sizes])


class PLSData(NamedTuple):
    """Cross-products of the data, computed once (d = p + 1 columns ``[X y]``; q_2 = columns of the dense blocks).

    d11:  (l_1, k_1, k_1)  diagonal blocks of Z_1'Z_1
    z1d:  (l_1, k_1, d)    Z_1'[X y]
    z1z2: (l_1, k_1, q_2)  Z_1'Z_2
    z2z2: (q_2, q_2)       Z_2'Z_2
    z2d:  (q_2, d)         Z_2'[X y]
    dd:   (d, d)           [X y]'[X y]
    n:    ()               observations
    """

    d11: jnp.ndarray
    z1d: jnp.ndarray
    z1z2: jnp.ndarray
    z2z2: jnp.ndarray
    z2d: jnp.ndarray
    dd: jnp.ndarray
    n: jnp.ndarray


class PLSFactor(NamedTuple):
    """The blocked Cholesky factor of ``A`` and the solved right-hand sides at one theta.

    l11: (l_1, k_1, k_1)  l21t: (l_1, k_1, q_2) = L21' by level   l22: (q_2, q_2)
    c1:  (l_1, k_1, d), c2: (q_2, d): ``C = L^-1 Lambda'Z'[X y]`` split by block
    stats: the weighted statistics of :mod:`jaxlmm.likelihood`
    """

    l11: jnp.ndarray
    l21t: jnp.ndarray
    l22: jnp.ndarray
    c1: jnp.ndarray
    c2: jnp.ndarray
    stats: WeightedStats


def pls_data(blocks: list, X: np.ndarray, y: np.ndarray) -> tuple[PLSData, Layout]:
    """Cross-products for :func:`pls_factor` (numpy, once per model). blocks[0] must be a grouping block (codes set);
    an empty grouping block (no levels, k = 0) stands in when the model has only kernel blocks."""
    n = y.shape[0]
    data = np.concatenate([X, y[:, None]], axis=1)
    first, z2 = blocks[0], dense_part(blocks)
    l1, k1 = first.size
    d11 = np.zeros((l1, k1, k1))
    if l1:
        np.add.at(d11, first.codes, first.values[:, :, None] * first.values[:, None, :])
    z1d, z2d = z_cross(first, z2, data)
    arrays = (d11, z1d, z_cross(first, z2, z2)[0], z2.T @ z2, z2d, data.T @ data, np.asarray(float(n)))
    layout = Layout(tuple(b.size for b in blocks))
    return PLSData(*(jnp.asarray(a) for a in arrays)), layout


def dense_part(blocks: list) -> np.ndarray:
    """``Z_2`` (n, q_2): the columns of Z of blocks 1.. (those factorized densely)."""
    rest = blocks[1:]
    if not rest:  # then block 0 is a grouping factor with a code per observation
        return np.zeros((blocks[0].codes.shape[0], 0))
    return np.concatenate([dense_z(b) for b in rest], axis=1)


def z_cross(first: ReBlock, z2: np.ndarray, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Z_1'A`` as (l_1, k_1, d) (segment sums by level, no Z_1 formed) and ``Z_2'A`` (q_2, d); A: (n, d)."""
    l1, k1 = first.size
    z1a = np.zeros((l1, k1, A.shape[1]))
    for c in range(k1):
        np.add.at(z1a[:, c, :], first.codes, first.values[:, c, None] * A)
    return z1a, z2.T @ A


def empty_block() -> ReBlock:
    """The stand-in block 0 for a model whose random effects are all kernels (no grouping factor)."""
    return ReBlock("", (), (), np.zeros(0, np.int64), np.zeros((0, 0)), None)


# ----------------------------------------------------------------------------------------------------------------
# Lambda


def relative_factors(theta: jnp.ndarray, layout: Layout) -> list:
    """The lower-triangular ``T_b`` (k_b, k_b) of each block from theta (column-major lower triangles)."""
    factors, at = [], 0
    for _, k in layout.sizes:
        rows, cols = np.triu_indices(k)  # (col, row) pairs of the lower triangle in column-major order
        size = rows.size
        factors.append(jnp.zeros((k, k), theta.dtype).at[cols, rows].set(theta[at:at + size]))
        at += size
    return factors


def theta_from_params(params: jnp.ndarray, free: jnp.ndarray, is_diagonal) -> jnp.ndarray:
    """Unconstrained parameters -> theta: diagonal entries ``exp(min(t, LOG_THETA_MAX))`` (exactly 0 where not
    ``free``), others ``t``.

    The cap keeps the Woodbury difference ``[X y]'[X y] - C'C`` accurate: its rounding error grows like
    ``eps theta^2 |Z|^2``, so a fit whose residual variance heads to 0 (theta to infinity) stops at the cap (flat
    criterion beyond it) instead of running into rounding noise; :func:`jaxlmm.mixed.fit_mixed` reports it.
    """
    is_diagonal = jnp.asarray(is_diagonal)
    positive = jnp.where(free, jnp.exp(jnp.minimum(jnp.where(free, params, 0.0), LOG_THETA_MAX)), 0.0)
    return jnp.where(is_diagonal, positive, params)


def _dense_lambda_t(factors, sizes, M: jnp.ndarray) -> jnp.ndarray:
    """``Lambda_2' M`` for the dense blocks (``sizes`` = their (l, k)); M: (q_2, ...) level-major rows."""
    out, at = [], 0
    for (levels, k), T in zip(sizes, factors):
        part = M[at:at + levels * k].reshape((levels, k) + M.shape[1:])
        out.append(jnp.einsum("ba,lb...->la...", T, part).reshape((levels * k,) + M.shape[1:]))
        at += levels * k
    return jnp.concatenate(out, axis=0)


# ----------------------------------------------------------------------------------------------------------------
# factor and criterion


def pls_factor(theta: jnp.ndarray, data: PLSData, layout: Layout) -> PLSFactor:
    """Blocked Cholesky of ``Lambda'Z'Z Lambda + I`` and the weighted statistics (see module docstring)."""
    factors = relative_factors(theta, layout)
    t1, dense_sizes, dense_factors = factors[0], layout.sizes[1:], factors[1:]
    k1 = t1.shape[0]
    a11 = jnp.einsum("ba,jbc,cd->jad", t1, data.d11, t1) + jnp.eye(k1, dtype=theta.dtype)
    l11 = jnp.linalg.cholesky(a11)
    c1 = solve_triangular(l11, jnp.einsum("ba,jbd->jad", t1, data.z1d), lower=True)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(l11, axis1=1, axis2=2)))
    gram = data.dd - jnp.einsum("jkd,jke->de", c1, c1)
    q2 = data.z2z2.shape[0]
    if q2 == 0:
        l21t = jnp.zeros(data.z1z2.shape, theta.dtype)
        l22, c2 = jnp.zeros((0, 0), theta.dtype), jnp.zeros((0, data.dd.shape[0]), theta.dtype)
    else:
        a12 = jnp.einsum("ba,jbq->jaq", t1, data.z1z2)  # (l1, k1, q2) = Lambda_1'Z_1'Z_2, then times Lambda_2:
        a12 = jnp.moveaxis(_dense_lambda_t(dense_factors, dense_sizes, jnp.moveaxis(a12, 2, 0)), 0, 2)
        l21t = solve_triangular(l11, a12, lower=True)  # L11^-1 A12 = L21' per level
        a22 = _dense_lambda_t(dense_factors, dense_sizes, _dense_lambda_t(dense_factors, dense_sizes, data.z2z2).T)
        a22 = a22 + jnp.eye(q2, dtype=theta.dtype) - jnp.einsum("jkq,jkr->qr", l21t, l21t)
        l22 = jnp.linalg.cholesky(0.5 * (a22 + a22.T))
        rhs2 = _dense_lambda_t(dense_factors, dense_sizes, data.z2d) - jnp.einsum("jkq,jkd->qd", l21t, c1)
        c2 = solve_triangular(l22, rhs2, lower=True)
        logdet = logdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(l22)))
        gram = gram - c2.T @ c2
    stats = WeightedStats(logdet_h=logdet, xhx=gram[:-1, :-1], xhy=gram[:-1, -1], yhy=gram[-1, -1])
    return PLSFactor(l11, l21t, l22, c1, c2, stats)


def pls_criterion(theta: jnp.ndarray, data: PLSData, layout: Layout, reml) -> jnp.ndarray:
    """Profiled REML criterion (``reml`` true) or ML deviance (false) at theta, lme4's units (-2 log L).

    ``reml`` may be a traced bool/0-1 value, so one compiled function serves both methods.
    """
    stats = pls_factor(theta, data, layout).stats
    return jnp.where(jnp.asarray(reml, bool), profiled_criterion_from_stats(stats, data.n, "REML"),
                     profiled_criterion_from_stats(stats, data.n, "ML"))


class PLSObjective(NamedTuple):
    """``objective(theta, data, reml)``: :func:`pls_criterion` for one layout (hashable: a static jit argument)."""

    layout: Layout

    def __call__(self, theta, data, reml):
        return pls_criterion(theta, data, self.layout, reml)


class ThetaTransform(NamedTuple):
    """``transform(params, free) -> theta`` (:func:`theta_from_params`) for :func:`jaxlmm.optimize.minimize`."""

    is_diagonal: tuple

    def __call__(self, params, free):
        return theta_from_params(params, free, np.asarray(self.is_diagonal))


# ----------------------------------------------------------------------------------------------------------------
# conditional modes and variances


def conditional_modes(factor: PLSFactor, theta: jnp.ndarray, layout: Layout, beta: jnp.ndarray) -> list:
    """BLUPs ``B = Lambda u``, ``u = A^-1 Lambda'Z'(y - X beta)``, one (l_b, k_b) array per block."""
    w = jnp.concatenate([-beta, jnp.ones((1,), beta.dtype)])
    r1, r2 = factor.c1 @ w, factor.c2 @ w  # L^-1 Lambda'Z'(y - X beta)
    u2 = solve_triangular(factor.l22, r2, lower=True, trans="T") if r2.shape[0] else r2
    u1 = solve_triangular(factor.l11, (r1 - factor.l21t @ u2)[..., None], lower=True, trans="T")[..., 0]
    factors = relative_factors(theta, layout)
    modes = [u1 @ factors[0].T]
    at = 0
    for (levels, k), T in zip(layout.sizes[1:], factors[1:]):
        modes.append(u2[at:at + levels * k].reshape(levels, k) @ T.T)
        at += levels * k
    return modes


def conditional_covariances(factor: PLSFactor, theta: jnp.ndarray, layout: Layout, s2) -> list:
    """lme4's ``condVar``: per level the (k_b, k_b) block of ``s2 Lambda A^-1 Lambda'`` (fixed effects known).

    Block 0 from ``A^-1_11 = M'M + P'P`` per level (``M = L11^-1``, ``P = L22^-1 L21 M``); dense blocks from
    ``A^-1_22 = L22^-T L22^-1``. Returns one (l_b, k_b, k_b) array per block.
    """
    factors = relative_factors(theta, layout)
    k1 = factors[0].shape[0]
    eye = jnp.broadcast_to(jnp.eye(k1, dtype=theta.dtype), factor.l11.shape)
    m = solve_triangular(factor.l11, eye, lower=True)  # (l1, k1, k1)
    inv11 = jnp.einsum("jab,jac->jbc", m, m)
    out = []
    if factor.l22.shape[0]:
        l22_inv = solve_triangular(factor.l22, jnp.eye(factor.l22.shape[0], dtype=theta.dtype), lower=True)
        # P_j = L22^-1 L21_j M_j with L21_j = l21t[j]' : (q2, k1)
        p = jnp.einsum("qr,jkr,jkc->jqc", l22_inv, factor.l21t, m)
        inv11 = inv11 + jnp.einsum("jqb,jqc->jbc", p, p)
        inv22 = l22_inv.T @ l22_inv
    out.append(s2 * jnp.einsum("ab,jbc,dc->jad", factors[0], inv11, factors[0]))
    at = 0
    for (levels, k), T in zip(layout.sizes[1:], factors[1:]):
        block = inv22[at:at + levels * k, at:at + levels * k].reshape(levels, k, levels, k)
        diag = jnp.einsum("jajb->jab", block)
        out.append(s2 * jnp.einsum("ab,jbc,dc->jad", T, diag, T))
        at += levels * k
    return out


def dense_inverse_block(factor: PLSFactor, start: int, stop: int) -> jnp.ndarray:
    """Rows/columns ``start:stop`` of ``A^-1`` restricted to the dense blocks, (stop - start, stop - start)."""
    q2 = factor.l22.shape[0]
    l22_inv = solve_triangular(factor.l22, jnp.eye(q2, dtype=factor.l22.dtype), lower=True)
    return l22_inv[:, start:stop].T @ l22_inv[:, start:stop]
