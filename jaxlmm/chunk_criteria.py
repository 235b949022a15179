"""REML/ML criteria of all one-variant models of a chunk at once, as whole-array operations (the scan's hot loop).

Variant b of a chunk has the model ``y ~ C + x_b + u``, ``H_b = I + lambda_b K``. In K's eigenbasis (eigenvalues
``s_i``, i = 1..m) with weights ``w_ib = 1 / (1 + lambda_b s_i)``, every entry of its weighted Gram matrix
``[C x_b y]' H_b^-1 [C x_b y]`` is a weighted sum over the m rotated rows plus the part K does not reach:

    [C y]'W_b[C y]  = products' @ W          (one matrix product for all b; products = pairwise column products)
    [C y]'W_b x_b   = [C y]' @ (W * X)       (one elementwise pass and one matrix product)
    x_b'W_b x_b     = sum_i w_ib x_ib^2      (one pass)
    log|H_b|        = sum_i log(1 + lambda_b s_i)

with ``W = (w_ib)`` and ``X = (U'x_b)`` both (m, B). So one evaluation for the whole chunk is a few passes over two
(m, B) arrays, instead of B separate (m, c+2) Gram matrices.

From the Gram matrix, covariates are projected out by sequential elimination (GEMMA's ``CalcPab``, Gaussian
elimination on an SPD matrix, i.e. a Cholesky factorization written out): eliminating column k updates
``P[a, b] <- P[a, b] - P[a, k] P[b, k] / P[k, k]`` and contributes ``log P[k, k]`` to ``log|X'H^-1X|``. With c
covariates this is O(c^3) elementwise operations on (B,) arrays, no batched small-matrix factorizations. After the
covariates: ``xPx, xPy, yPy``; then ``beta = xPy / xPx``, ``q = yPy - xPy^2 / xPx`` and

    REML: log|H| + log|C'H^-1C| + log xPx + (n - p) (1 + log(2 pi q / (n - p)))
    ML:   log|H| + n (1 + log(2 pi q / n)),          p = c + 1,

the same profiled criteria as :mod:`jaxlmm.likelihood` (lme4 units, -2 log L).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from . import series
from .likelihood import LOG_2PI


class ChunkData(NamedTuple):
    """One phenotype and the B variants of a chunk, rotated into K's eigenbasis.

    eigenvalues:   (m,)        s_i
    shared:        (c+1, m)    (U'[C y])', one row per column of [C y]
    products:      (k, m)      products of pairs of shared rows, k = (c+1)(c+2)/2, in ``np.triu_indices`` order
    x:             (m, B)      U'x_b

    shared and products are stored as rows so that every weighted sum over the m rotated rows is a product
    ``rows @ weights`` contracting the left operand's last axis: XLA:CPU runs those with YNNPACK, and a product
    contracting the left operand's first axis (``shared.T @ weights``) with Eigen, which repacks the operands
    (chunk fits with the transposed products took 7% longer: N = 500 9.9 -> 9.2 ms, mouse 36.1 -> 34.2 ms).
    null_shared:   (c+1, c+1)  [C y]'(I - UU')[C y]
    null_x_shared: (c+1, B)    [C y]'(I - UU') x_b
    null_xx:       (B,)        x_b'(I - UU') x_b
    n:             ()          observations
    """

    eigenvalues: jnp.ndarray
    shared: jnp.ndarray
    products: jnp.ndarray
    x: jnp.ndarray
    null_shared: jnp.ndarray
    null_x_shared: jnp.ndarray
    null_xx: jnp.ndarray
    n: jnp.ndarray


class Projected(NamedTuple):
    """Per-variant statistics with the covariates projected out under H^-1 weights; every field (B,).

    logdet_h: log|H|;  logdet_cc: log|C'H^-1C|;  xpx, xpy, ypy: x'Px, x'Py, y'Py
    """

    logdet_h: jnp.ndarray
    logdet_cc: jnp.ndarray
    xpx: jnp.ndarray
    xpy: jnp.ndarray
    ypy: jnp.ndarray


def chunk_data(eigenvalues, shared, x, null_shared, null_x_shared, null_xx, n) -> ChunkData:
    """Assemble :class:`ChunkData` from U'[C y] (m, c+1), storing it as rows and computing the pairwise products of
    its columns once."""
    shared_rows = shared.T
    rows, cols = np.triu_indices(shared_rows.shape[0])
    return ChunkData(eigenvalues, shared_rows, shared_rows[rows] * shared_rows[cols], x, null_shared, null_x_shared,
                     null_xx, n)


def select_variants(data: ChunkData, index) -> ChunkData:
    """The data of variants ``index`` (K,) of the chunk only (x and the variants' null parts): sliced when index is
    a numpy run of consecutive positions (known when tracing), else gathered (XLA:CPU gathers columns through two
    transposes: 0.15 ms for 128 of 512 variants at N = 500)."""
    if isinstance(index, np.ndarray) and index.size and np.all(np.diff(index) == 1):
        index = slice(int(index[0]), int(index[-1]) + 1)
    return data._replace(x=data.x[:, index], null_x_shared=data.null_x_shared[:, index], null_xx=data.null_xx[index])


def _entries(shared, cross, xx, data: ChunkData) -> dict:
    """Gram entries keyed by column pair (a, b), a <= b, columns ordered [C_1..C_c, x, y], from the weighted sums
    over rotated rows (shared: (k, ...), cross: (c+1, ...), xx: (...)) plus the parts K does not reach."""
    c1 = data.shared.shape[0]  # c + 1
    tail = (1,) * (xx.ndim - 1)  # per-variant null parts broadcast over leading axes (grid points)
    order = list(range(c1 - 1)) + [c1]  # shared column j -> position in [C x y]
    entries = {}
    for i, (a, b) in enumerate(zip(*np.triu_indices(c1))):
        entries[(order[a], order[b])] = shared[i] + data.null_shared[a, b]
    for a in range(c1):
        entries[tuple(sorted((order[a], c1 - 1)))] = cross[a] + data.null_x_shared[a].reshape(tail + (-1,))
    entries[(c1 - 1, c1 - 1)] = xx + data.null_xx.reshape(tail + (-1,))
    return entries


def gram(ratio: jnp.ndarray, data: ChunkData):
    """Weighted Gram entries of every variant's [C x y] at ratios (B,) (or one shared ratio ()).

    Returns (entries, logdet_h): entries maps a column pair (a, b), a <= b, columns ordered [C_1..C_c, x, y], to a
    (B,) array; logdet_h (B,) is log|H_b|."""
    lam_s = data.eigenvalues[:, None] * jnp.broadcast_to(ratio, data.x.shape[1:])[None, :]  # (m, B)
    weights = 1.0 / (1.0 + lam_s)
    weighted_x = weights * data.x
    entries = _entries(data.products @ weights, data.shared @ weighted_x, jnp.sum(weighted_x * data.x, axis=0),
                       data)
    return entries, jnp.sum(jnp.log1p(lam_s), axis=0)


def grid_gram(ratios: jnp.ndarray, data: ChunkData):
    """Gram entries of every variant at each of G ratios shared by all variants: ratios (G,) -> entries (G, B) and
    logdet_h (G, 1). The weights are then one (m, G) matrix, so the whole grid is three matrix products."""
    m, b = data.x.shape
    lam_s = ratios[:, None] * data.eigenvalues[None, :]  # (G, m): rows, as the left operand of the products
    weights = 1.0 / (1.0 + lam_s)
    shared_x = (data.shared.T[:, :, None] * data.x[:, None, :]).reshape(m, -1)  # (m, (c+1) B)
    cross = (weights @ shared_x).reshape(ratios.shape[0], -1, b).transpose(1, 0, 2)  # (c+1, G, B)
    xx = weights @ (data.x * data.x)  # (G, B)
    shared = (data.products @ weights.T)[:, :, None]  # (k, G, 1)
    logdet_h = jnp.sum(jnp.log1p(lam_s), axis=1)[:, None]
    return _entries(shared, cross, xx, data), logdet_h


def _eliminate(entries: dict, size: int, c: int, logdet_like):
    """Eliminate the first c of ``size`` columns (sequential elimination, see module docstring); returns the
    remaining entries and log|C'H^-1C| (shaped like logdet_like)."""
    logdet_cc = series.zeros_like(logdet_like)
    for k in range(c):
        pivot = entries[(k, k)]
        logdet_cc = logdet_cc + series.log(pivot)
        entries = {(a, b): entries[(a, b)] - entries[(k, a)] * entries[(k, b)] / pivot
                   for a in range(k + 1, size) for b in range(a, size)}
    return entries, logdet_cc


def project_covariates(entries: dict, logdet_h, c: int) -> Projected:
    """Eliminate the c covariate columns of [C x y] (see module docstring)."""
    entries, logdet_cc = _eliminate(entries, c + 2, c, logdet_h)
    return Projected(logdet_h, logdet_cc, entries[(c, c)], entries[(c, c + 1)], entries[(c + 1, c + 1)])


def projected(ratio, data: ChunkData) -> Projected:
    """:class:`Projected` statistics of every variant at ratios (B,) or one ratio ()."""
    entries, logdet_h = gram(ratio, data)
    return project_covariates(entries, logdet_h, data.shared.shape[0] - 1)


def grid_projected(ratios, data: ChunkData) -> Projected:
    """:class:`Projected` statistics of every variant at each of G shared ratios; fields (G, B)."""
    entries, logdet_h = grid_gram(ratios, data)
    return project_covariates(entries, jnp.broadcast_to(logdet_h, ratios.shape + data.x.shape[1:]),
                              data.shared.shape[0] - 1)


def residual(stats: Projected):
    """(beta, q): the variant's GLS effect x'Py / x'Px and the weighted residual sum of squares."""
    beta = stats.xpy / stats.xpx
    return beta, stats.ypy - beta * stats.xpy


def _profiled(logdet_h, logdet_xx, q, n, p: int, method: str):
    """-2 log restricted likelihood (REML) or -2 log likelihood (ML) with the variances profiled out, from log|H|,
    log|X'H^-1X| of the p fixed-effect columns and the weighted residual sum of squares q."""
    if method == "REML":
        df = n - p
        return logdet_h + logdet_xx + df * (1.0 + LOG_2PI + series.log(q / df))
    return logdet_h + n * (1.0 + LOG_2PI + series.log(q / n))


def criterion(stats: Projected, n, p: int, method: str):
    """Profiled -2 log restricted likelihood (REML) or -2 log likelihood (ML), (B,); p = c + 1 fixed effects."""
    _, q = residual(stats)
    return _profiled(stats.logdet_h, stats.logdet_cc + series.log(stats.xpx), q, n, p, method)


def criterion_by_lane(stats: Projected, n, p: int, reml_lanes):
    """REML criterion where reml_lanes is True, ML elsewhere (same shapes): REML and ML fits of a chunk run as one
    batch of lanes sharing every pass over the chunk."""
    return series.where(reml_lanes, criterion(stats, n, p, "REML"), criterion(stats, n, p, "ML"))


def chunk_criterion(log_ratio, data: ChunkData, method: str):
    """Criterion of every variant at its own log lambda, (B,) -> (B,); entry b depends on log_ratio[b] only."""
    return criterion(projected(jnp.exp(log_ratio), data), data.n, data.shared.shape[0], method)


def _taylor_gram(ratio, data: ChunkData):
    """Gram entries and log|H| of every variant with their first and second derivatives in t = log ratio.

    With ``w = 1 / (1 + ratio s)``, ``dw/dt = w (w - 1)``, so each derivative of an entry is the same weighted sum
    with other weights (:func:`_taylor_weights`). Returns three (entries, logdet_h) pairs: value, first and second
    derivative (null parts in the value only)."""
    weights, logdets = _taylor_weights(data.eigenvalues[:, None] * ratio[None, :])  # (m, B) each
    zero = _without_null_parts(data)
    parts = []
    for k, w in enumerate(weights):  # separate products: XLA:CPU runs a stacked (m, 3B) version 4x slower
        weighted_x = w * data.x
        entries = _entries(data.products @ w, data.shared @ weighted_x,
                           jnp.sum(weighted_x * data.x, axis=0), data if k == 0 else zero)
        parts.append((entries, logdets[k]))
    return parts


def _taylor_weights(lam_s, axis=0):
    """lam_s: ratio x eigenvalue, the m eigenvalues along ``axis``. Returns the weights ``w = 1 / (1 + lam_s)`` with
    their first and second derivatives in t = log ratio, ``w1 = dw/dt = w (w - 1)`` and ``d2w/dt2 = (2w - 1) w1``,
    and log|H| = sum log(1 + lam_s) over the eigenvalues with its derivatives ``sum (1 - w)`` and ``-sum w1``."""
    w = 1.0 / (1.0 + lam_s)
    w1 = w * (w - 1.0)
    logdets = (jnp.sum(jnp.log1p(lam_s), axis=axis), jnp.sum(1.0 - w, axis=axis), -jnp.sum(w1, axis=axis))
    return (w, w1, (2.0 * w - 1.0) * w1), logdets


def _without_null_parts(data: ChunkData) -> ChunkData:
    """The data with the parts K does not reach set to 0: they enter an entry's value, not its derivatives."""
    return data._replace(null_shared=jnp.zeros_like(data.null_shared),
                         null_x_shared=jnp.zeros_like(data.null_x_shared), null_xx=jnp.zeros_like(data.null_xx))


def _along(parts, eps):
    """The Taylor polynomial ``sum_k E_k eps^k / k!`` of the Gram entries and log|H| (parts: (entries, logdet_h)
    pairs, one per order), by Horner's rule."""
    entries, logdet = dict(parts[-1][0]), parts[-1][1]
    for k in range(len(parts) - 2, -1, -1):
        scale = eps / (k + 1)
        entries = {key: parts[k][0][key] + scale * value for key, value in entries.items()}
        logdet = parts[k][1] + scale * logdet
    return entries, logdet


def _projected_series(parts, data: ChunkData, shape) -> Projected:
    """:class:`Projected` statistics as truncated Taylor series in log lambda (:mod:`jaxlmm.series`), from those of
    the Gram entries and log|H| (one (entries, logdet_h) pair per order, every array of the given shape): the
    covariate elimination runs once on the series, so it costs a few arrays of that shape per order."""
    entries = {key: series.Series(tuple(jnp.broadcast_to(part[0][key], shape) for part in parts))
               for key in parts[0][0]}
    logdet_h = series.Series(tuple(jnp.broadcast_to(part[1], shape) for part in parts))
    return project_covariates(entries, logdet_h, data.shared.shape[0] - 1)


def _derivatives_from_taylor(parts, data: ChunkData, method, shape):
    """Derivatives in log lambda of the criterion, value first (see :func:`_projected_series`); method: "REML",
    "ML" or a bool array choosing REML per lane."""
    stats, p = _projected_series(parts, data, shape), data.shared.shape[0]
    if isinstance(method, str):
        return criterion(stats, data.n, p, method).terms
    return criterion_by_lane(stats, data.n, p, method).terms


def chunk_criterion_expansion(log_ratio, data: ChunkData, method):
    """(value, gradient, curvature, parts): the derivatives of :func:`chunk_criterion` in log lambda, each (B,), and
    the Gram entries' Taylor coefficients (``parts``, as :func:`_taylor_gram`) that :func:`extrapolated` carries to a
    nearby point without another pass over the chunk. method: "REML", "ML" or a (B,) bool array choosing REML per
    lane (see :func:`criterion_by_lane`). The (m, B) passes give the Taylor coefficients, the rest is (B,)-sized
    arithmetic."""
    parts = _taylor_gram(jnp.exp(log_ratio), data)
    return (*_derivatives_from_taylor(parts, data, method, log_ratio.shape), parts)


def extrapolated(parts, step, c: int) -> Projected:
    """:class:`Projected` statistics at ``log lambda + step`` (step (B,)) from the Taylor coefficients ``parts`` at
    log lambda (:func:`chunk_criterion_expansion`); the error is of order step^3 (1e-15 relative for the Newton
    polish's steps of at most 1e-5)."""
    return project_covariates(*_along(parts, step), c)


def grid_criterion_derivatives(log_ratios, data: ChunkData, methods=("REML", "ML")):
    """(value, gradient, curvature) in log lambda of every variant at each of G log ratios shared by all variants,
    each (G, B), for each method in ``methods`` (a tuple of triples). Shared ratios make every Taylor weight one
    (m, G) matrix, so this is a few matrix products (as :func:`grid_gram`), not passes over (m, B) arrays per
    point; the methods share them."""
    m, b = data.x.shape
    taylor, logdets = _taylor_weights(jnp.exp(log_ratios)[:, None] * data.eigenvalues[None, :], axis=1)  # (G, m)
    weights = jnp.concatenate(taylor, axis=0)  # (3G, m): rows, as the left operand of the products
    g = log_ratios.shape[0]
    shared_x = (data.shared.T[:, :, None] * data.x[:, None, :]).reshape(m, -1)  # (m, (c+1) B)
    cross = (weights @ shared_x).reshape(3, g, -1, b).transpose(0, 2, 1, 3)  # (3, c+1, G, B)
    xx = (weights @ (data.x * data.x)).reshape(3, g, b)
    shared = (data.products @ weights.T).reshape(-1, 3, g).transpose(1, 0, 2)[..., None]  # (3, k, G, 1)
    zero = _without_null_parts(data)
    parts = [(_entries(jnp.broadcast_to(shared[o], shared[o].shape[:2] + (b,)), cross[o], xx[o],
                       data if o == 0 else zero), jnp.broadcast_to(logdets[o][:, None], (g, b)))
             for o in range(3)]
    stats = _projected_series(parts, data, (g, b))  # shared by the methods
    return tuple(criterion(stats, data.n, data.shared.shape[0], method).terms for method in methods)


# ----------------------------------------------------------------------------------------------------------------
# the null model (no variant): the same weighted sums over the shared columns only


class NullData(NamedTuple):
    """One phenotype's model without a variant, ``y ~ C + u``, rotated into K's eigenbasis.

    eigenvalues: (m,)  s_i;  products: (k, m) pairwise products of the columns of U'[C y], as rows (as in
    :class:`ChunkData`);
    null_shared: (c+1, c+1)  [C y]'(I - UU')[C y];  n: () observations
    """

    eigenvalues: jnp.ndarray
    products: jnp.ndarray
    null_shared: jnp.ndarray
    n: jnp.ndarray


def null_data(eigenvalues, shared, null_shared, n) -> NullData:
    """:class:`NullData` from U'[C y] (m, c+1) and the part K does not reach."""
    shared_rows = shared.T
    rows, cols = np.triu_indices(shared_rows.shape[0])
    return NullData(eigenvalues, shared_rows[rows] * shared_rows[cols], null_shared, n)


def null_criteria(ratios, data: NullData):
    """(REML, ML) criteria of the model without a variant at ratios (R,) -> two (R,) arrays, with
    p = c fixed effects (the covariates; c = 0 allowed); y'Py is the residual sum of squares q.
    Returns (reml, ml, q)."""
    c = data.null_shared.shape[0] - 1
    lam_s = data.eigenvalues[:, None] * ratios[None, :]  # (m, R)
    sums = data.products @ (1.0 / (1.0 + lam_s))  # (k, R)
    entries = {(a, b): sums[i] + data.null_shared[a, b] for i, (a, b) in enumerate(zip(*np.triu_indices(c + 1)))}
    logdet_h = jnp.sum(jnp.log1p(lam_s), axis=0)
    entries, logdet_cc = _eliminate(entries, c + 1, c, logdet_h)
    q = entries[(c, c)]
    return (*(_profiled(logdet_h, logdet_cc, q, data.n, c, method) for method in ("REML", "ML")), q)
