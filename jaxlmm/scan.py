"""The variant scan: ``y ~ covariates + variant_j + random effect`` for every variant j, batched.

The random effect's kernel is decomposed once (:func:`jaxlmm.structure.spectral_basis`: ``eigh`` of a kinship, or
the closed form of a grouping factor). Covariates and phenotypes are rotated once; each chunk of genotypes is rotated
with one matrix product (segment sums for groups). Every variant's model then lives in the eigenbasis, where
``H = I + lambda K`` is diagonal, and is fitted with the same likelihood code as :func:`jaxlmm.fit`
(:func:`jaxlmm.likelihood.spectral_stats`), vmapped over the variants of a chunk (and over phenotypes) under one
``jit``. The optimizer works on whole chunks: every variant's criterion is a separate function of its own
``log lambda``, so one nested forward-mode pass gives all gradients and curvatures, and optax applies elementwise
Newton steps (:func:`jaxlmm.optimize.minimize_elementwise`).

Tests follow GEMMA's ``-lmm 4`` definitions so results compare one to one:

* Wald: REML fit with the variant; ``beta / se`` with ``se^2 = s2_e [(X'H^-1X)^-1]_xx``, ``s2_e = q/(n - c - 1)``,
  F(1, n - c - 1) reference (c = number of covariates including the intercept).
* LRT: ML fits with and without the variant, ``2 (logL1 - logL0)`` against chi-square(1).
* Score: at the null model's ML lambda, ``n (x'Py)^2 / (y'Py x'Px)`` against F(1, n - c - 1), where P projects
  out the covariates with H^-1 weights.

Kinship centring: GEMMA double-centres the kinship of the analyzed samples (``K <- P K P``, ``P = I - 11'/n``) before
decomposing it; ``center_kinship=True`` (the default) does the same. REML fits (and so Wald tests) are unchanged by
it when the model has an intercept; ML fits, LRT, score tests and the pve scale ``tr(K)/n`` follow the centred matrix.

lambda = s2_g / s2_e is searched on GEMMA's interval [1e-5, 1e5]: a 10-point log grid (plus the null model's
lambdas and points 0.2 and 0.5 either side of them, where most variants' optima lie) with criteria, gradients and
curvatures picks the starting point (:func:`_hermite_start`), so a multimodal criterion does not trap the search;
Newton steps refine it (most variants need one evaluation, at the start; the few that need more are iterated by
themselves; a fit whose end of the interval beats its interpolated interior optimum by a clear margin is not evaluated
at all, :func:`_boundary_certain`); an optimum beyond the interval is reported at its end, as GEMMA does.
The statistics at the optimum are carried from the last evaluation's Taylor coefficients over the final short step
(:func:`jaxlmm.chunk_criteria.extrapolated`), so no pass over the chunk is spent on them.

Modes: ``"exact"`` re-estimates lambda per variant; ``"null"`` keeps the null model's REML lambda for every variant
(EMMAX/GCTA-style, fast, approximate; p_lrt is not computed).
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Callable, Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import chunk_criteria, executables, structure, validate
from .genotype_chunks import is_counts, transfer_dtype, with_nan
from .optimize import minimize_elementwise

LOG_LAMBDA_BOUNDS = (float(np.log(1e-5)), float(np.log(1e5)))
GRID_POINTS = 10  # evenly spaced; with the points near the null model, 16 took longer and ended no more fits
POLISH_XTOL = 1e-5  # last Newton step taken unevaluated when at most this long (leaves ~1e-10 in log lambda)
QUINTIC_NEWTON_STEPS = 4  # refinements of a start on its interval's quintic (B-sized arithmetic)
STRAGGLER_SHARE = 1 / 4  # after the first evaluation, Newton steps evaluate at most this share of the lanes at once
STATUS_CODES = ("ok", "monomorphic", "all_missing", "too_many_missing", "low_maf", "hwe", "collinear",
                "not_converged")
COLUMNS = (
    "variant", "phenotype", "n_miss", "af", "beta", "se", "wald", "p_wald", "p_lrt", "p_score", "lambda_remle",
    "lambda_mle", "s2_g", "s2_e", "logl_remle", "logl_mle", "logl_H1", "pve", "converged", "iterations", "status",
)


class NullModel(NamedTuple):
    """Per-phenotype null fits (no variant). All fields (P,).

    lambda_remle, lambda_mle: s2_g / s2_e at the REML / ML optimum
    logl_remle, logl_mle:     log (restricted) likelihoods, nats
    s2_g, s2_e:               REML variance components
    pve, pve_se:              GEMMA's pve = lambda tr(K)/n / (lambda tr(K)/n + 1) and its delta-method se
    """

    lambda_remle: np.ndarray
    lambda_mle: np.ndarray
    logl_remle: np.ndarray
    logl_mle: np.ndarray
    s2_g: np.ndarray
    s2_e: np.ndarray
    pve: np.ndarray
    pve_se: np.ndarray


class ScanResult(NamedTuple):
    """One row per (phenotype, variant), phenotype-major, variants in input order.

    columns: name -> (rows,) array, names in COLUMNS (status as strings)
    null:    the null models
    n:       samples analyzed; covariates: c including the intercept
    """

    columns: dict
    null: NullModel
    n: int
    covariates: int

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.columns)


# ----------------------------------------------------------------------------------------------------------------
# optima of log lambda: grid starts, then REML and ML Newton steps as one batch of lanes


def _log_lambda_grid():
    return jnp.linspace(*LOG_LAMBDA_BOUNDS, GRID_POINTS)


NEAR_NULL_OFFSETS = (0.2, 0.5)  # extra grid points at +- these from the null model's log lambdas (REML and ML)


def _search_grid(*null_log_lambdas):
    """The ascending grid of log lambdas every variant's criteria are evaluated on (matrix products): GEMMA's
    evenly spaced interval, the null model's REML and ML log lambdas, and points at :data:`NEAR_NULL_OFFSETS` on
    either side of them (clipped to the interval), since most variants explain little and have their optimum near
    the null model's: a narrow interval there makes the quintic start exact enough to end most fits at their first
    evaluation."""
    near = [t + sign * d for t in null_log_lambdas for d in NEAR_NULL_OFFSETS for sign in (-1.0, 1.0)]
    extra = jnp.clip(jnp.stack([*null_log_lambdas, *near]), *LOG_LAMBDA_BOUNDS)
    return jnp.sort(jnp.concatenate([_log_lambda_grid(), extra]))


def _best_start(points, values):
    """points (G,), values (G, B) -> (B,): each model's best point (the first on ties, so a start placed first is
    kept unless the grid beats it)."""
    return points[jnp.argmin(values, axis=0)]


def _hermite_start(points, values, grads, curvs):
    """Each model's starting log lambda from criteria on a grid, and its best boundary optimum: points (G,)
    ascending, values, gradients and curvatures (G, B).

    Interior candidates, as GEMMA searches every interval of its grid: in each interval whose gradient goes from
    negative to positive, the minimum of the cubic matching value and gradient at both ends (Hermite), valued by
    that cubic. The lowest one is refined on the quintic that also matches the curvatures (its error shrinks as the
    interval's sixth power: about 1e-4 in log lambda on the scan's grid, against 1e-2 for the cubic), and is the
    start (the best grid point when there is no interior candidate). Boundary candidates: an end of the search
    interval whose gradient points outwards, valued exactly. Newton then refines the start, and
    :func:`_choose_boundary` keeps a boundary optimum that beats the refined interior one (an interpolated estimate
    is not exact enough to choose between close optima). Returns (start, boundary point, boundary value, interior
    value), each (B,): the boundary value is inf where neither end is a local optimum; the interior value is the
    quintic's value at the start (inf where there is no interior candidate), which :func:`_boundary_certain`
    compares with the boundary's."""
    h = (points[1:] - points[:-1])[:, None]  # (G-1, 1)
    fa, fb, da, db = values[:-1], values[1:], grads[:-1] * h, grads[1:] * h
    # the cubic on values and gradients, p(s) = a3 s^3 + a2 s^2 + da s + fa on s in [0, 1], has its minimum at
    # s = -da / (a2 + sqrt(a2^2 - 3 a3 da)); its value there ranks the intervals
    a3, a2 = 2.0 * (fa - fb) + da + db, 3.0 * (fb - fa) - 2.0 * da - db
    denominator = a2 + jnp.sqrt(jnp.maximum(a2 * a2 - 3.0 * a3 * da, 0.0))
    s = jnp.clip(jnp.where(denominator > 0, -da / jnp.where(denominator > 0, denominator, 1.0), 0.5), 0.0, 1.0)
    bracket = (grads[:-1] < 0) & (grads[1:] > 0)
    inside_value = jnp.where(bracket, fa + s * (da + s * (a2 + s * a3)), jnp.inf)
    k = jnp.argmin(inside_value, axis=0)  # (B,): each model's best interval; one gather of all it needs
    stacked = jnp.stack([jnp.broadcast_to(a, inside_value.shape) for a in (
        points[:-1, None], h, s, fa, fb, da, db, curvs[:-1] * h * h, curvs[1:] * h * h)])  # (9, G-1, B)
    start, width, *interval = jnp.take_along_axis(stacked, k[None, None], axis=1)[:, 0]
    s_min, quintic_value = _quintic_minimum(*interval)
    inside = start + s_min * width
    lower_value = jnp.where(grads[0] >= 0, values[0], jnp.inf)
    upper_value = jnp.where(grads[-1] <= 0, values[-1], jnp.inf)
    boundary = jnp.where(upper_value < lower_value, points[-1], points[0])
    boundary_value = jnp.minimum(lower_value, upper_value)
    fallback = jnp.where(jnp.isfinite(boundary_value), boundary, points[jnp.argmin(values, axis=0)])
    interior = jnp.isfinite(jnp.min(inside_value, axis=0))
    start = jnp.where(interior, inside, fallback)
    return start, boundary, boundary_value, jnp.where(interior, quintic_value, jnp.inf)


def _quintic_minimum(s, fa, fb, da, db, ca, cb):
    """Minimum on [0, 1] of the quintic q(s) with value, first and second derivative fa, da, ca at 0 and fb, db, cb
    at 1 (all (B,)), by Newton steps on q' from s. Returns (s, q(s))."""
    r1, r2, r3 = fb - fa - da - 0.5 * ca, db - da - ca, cb - ca
    q1, q2 = da, 0.5 * ca
    q3, q4, q5 = 10.0 * r1 - 4.0 * r2 + 0.5 * r3, -15.0 * r1 + 7.0 * r2 - r3, 6.0 * r1 - 3.0 * r2 + 0.5 * r3
    for _ in range(QUINTIC_NEWTON_STEPS):
        slope = q1 + s * (2.0 * q2 + s * (3.0 * q3 + s * (4.0 * q4 + s * 5.0 * q5)))
        bend = 2.0 * q2 + s * (6.0 * q3 + s * (12.0 * q4 + s * 20.0 * q5))
        s = jnp.clip(jnp.where(bend > 0, s - slope / jnp.where(bend > 0, bend, 1.0), s), 0.0, 1.0)
    return s, fa + s * (q1 + s * (q2 + s * (q3 + s * (q4 + s * q5))))


def _computed_once(arrays, finite):
    """arrays (a tuple) as they are when ``finite`` (a traced bool; NaN otherwise), each computed once into a buffer.

    XLA fuses a chain of cheap elementwise operations into every operation that reads its result, recomputing it
    there: the Hermite start (~135 operations on (2B,) arrays, :func:`_hermite_start`) was copied into ~130
    fusions of the Newton steps, a quarter of the chunk program. A conditional's result is a buffer, so its
    readers read it instead (N = 500: 19,049 -> 14,150 instructions, kept program 3.41 -> 2.65 MB, loaded in
    0.35-0.40 s instead of 0.50-0.55 s, one chunk fit 10.9 -> 10.6 ms on one core; results bit for bit the same).
    ``jax.lax.optimization_barrier`` would say this directly, but XLA:CPU drops it before fusing (same 19,049)."""
    return jax.lax.cond(finite, lambda a: a, lambda a: tuple(jnp.full_like(v, jnp.nan) for v in a), arrays)


def _boundary_wins(boundary_value, value, grad, curv, index=None):
    """Where the boundary optimum (boundary_value) certainly beats the interior one near a start with criterion
    value, gradient and curvature (B,): when the Newton step d = grad / curv is short (at most 1e-3), the interior
    minimum is value - curv d^2 / 2 up to a cubic term (third derivative x d^3 / 6, below 2e-10 x the third
    derivative), and the boundary must be lower than value - curv d^2 (twice the predicted decrease) by more than
    rounding. Such fits need no refining: Newton would only confirm that the boundary wins. index: the fits whose
    value, grad and curv these are (None: all of boundary_value's, in order)."""
    if index is not None:
        boundary_value = boundary_value[index]
    step = jnp.abs(grad) / jnp.where(curv > 0, curv, 1.0)
    margin = grad * grad / jnp.where(curv > 0, curv, 1.0) + 1e-9 * (1.0 + jnp.abs(value))
    return (curv > 0) & (step <= 1e-3) & (boundary_value < value - margin)


BOUNDARY_MARGIN = 0.1  # -2 log L units by which a boundary optimum must beat the interpolated interior one unrefined


def _boundary_certain(boundary_value, interior_value):
    """Where the grid alone decides for the boundary optimum (B,) bool: the boundary's exact value beats the
    interior candidate's interpolated value (:func:`_hermite_start`; inf where there is none) by more than
    :data:`BOUNDARY_MARGIN` (plus 1e-9 relative). The quintic's value at its minimum was within 1.4e-4 of the refined
    optimum's on every interior fit of mouse HS1940 and a simulated N = 500 set (median 2e-9), so a margin of 0.1
    is three orders of magnitude beyond any interpolation error seen; closer calls are refined as before. Such fits
    are not evaluated at all (N = 500: every ML fit, where the boundary wins by 2.6 to 7 units)."""
    return jnp.isfinite(boundary_value) & (boundary_value < interior_value - BOUNDARY_MARGIN
                                           - 1e-9 * jnp.abs(boundary_value))


def _choose_boundary(boundary_value, values):
    """Where the boundary optimum of :func:`_hermite_start` beats the refined interior optimum (values: (B,)): a bool
    (B,) mask."""
    return boundary_value < values


def _newton_both(derivatives, start_remle, start_mle, max_iter, lane_derivatives=None, **options):
    """REML and ML optima of log lambda for B models at once: 2B lanes (REML first) of elementwise Newton (optax,
    :func:`jaxlmm.optimize.minimize_elementwise`) on GEMMA's interval, so both fits share every evaluation.
    derivatives(log_lambda (2B,), reml_lanes (2B,) bool) -> (value, gradient, curvature[, aux]), or None when every
    evaluation is of listed lanes. Optional lane_derivatives(log_lambda (K,), lanes (K,) int, reml_lanes (K,) bool),
    the same for the listed lanes only: the last few slow lanes are then iterated by themselves
    (:data:`STRAGGLER_SHARE` of the lanes at most). options: passed on to minimize_elementwise (polish_xtol, has_aux,
    settled, skip, first_lanes). Returns the ElementwiseResult of the 2B lanes."""
    b = start_remle.shape[0]
    lanes = jnp.arange(2 * b) < b
    given = None if derivatives is None else partial(derivatives, reml_lanes=lanes)
    objective = None if given is None else (lambda t: given(t)[0])
    few = None if lane_derivatives is None else (lambda t, index: lane_derivatives(t, index, lanes[index]))
    return minimize_elementwise(objective, jnp.concatenate([start_remle, start_mle]), *LOG_LAMBDA_BOUNDS,
                                max_iter=max_iter, derivatives=given, lane_derivatives=few,
                                compact_lanes=max(1, int(2 * b * STRAGGLER_SHARE)), **options)


def _null_derivatives(log_lambda, data, reml_lanes):
    """(value, gradient, curvature) in log lambda of the null criteria, REML or ML per lane (nested forward mode over
    a few (R,)-sized sums)."""
    def value(t):
        reml, ml, _ = chunk_criteria.null_criteria(jnp.exp(t), data)
        return jnp.where(reml_lanes, reml, ml)

    ones = jnp.ones_like(log_lambda)
    (v, grad), (_, curv) = jax.jvp(lambda t: jax.jvp(value, (t,), (ones,)), (log_lambda,), (ones,))
    return v, grad, curv


# XLA:CPU's newer fusion emitters compile the fits' float64 elementwise loops ~3x slower than its older ones (a
# (499, 128) multiply: 80-90 against 25-36 us on one core), and the Newton steps are mostly such loops; with the
# older ones a chunk fit is 6-10% faster (N = 500: 7.63 -> 7.20 ms, one core; mouse HS1940: 26.4 -> 23.7 ms) and
# its results are bit for bit the same. Scoped to these programs; the option names a CPU setting only.
SCAN_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@partial(jax.jit, static_argnames=("max_iter",), compiler_options=SCAN_COMPILER_OPTIONS)
def _null_fit(data: chunk_criteria.NullData, max_iter):
    """One phenotype's null model (no variant) in one compiled call: REML and ML optima of log lambda (grid, then
    Newton, as for variants), q at the REML optimum, both log-likelihoods, and the REML log-likelihood's second
    derivative in lambda (for the pve se). Returns a tuple of scalars."""
    points = jnp.concatenate([jnp.zeros(1, data.products.dtype), _log_lambda_grid()])  # lambda = 1, then the grid
    reml, ml, _ = chunk_criteria.null_criteria(jnp.exp(points), data)
    fit = _newton_both(partial(_null_derivatives, data=data), _best_start(points, reml[:, None]),
                       _best_start(points, ml[:, None]), max_iter)
    lam, lam_mle = jnp.exp(fit.params[0]), jnp.exp(fit.params[1])
    reml_at, _, q = chunk_criteria.null_criteria(lam[None], data)
    _, ml_at, _ = chunk_criteria.null_criteria(lam_mle[None], data)
    curvature = jax.hessian(lambda l: -0.5 * chunk_criteria.null_criteria(l[None], data)[0][0])(lam)
    return lam, lam_mle, q[0], -0.5 * reml_at[0], -0.5 * ml_at[0], curvature


FIT_OUTPUTS = ("beta", "se", "wald", "lrt", "score", "lambda_remle", "lambda_mle", "s2_g", "s2_e", "logl_remle",
               "logl_mle", "logl_H1", "pve", "collinear_ratio", "converged", "iterations")  # of a chunk fit, in order


def _variant_tests(remle, ml_criterion, null, t_remle, t_mle, null_logl_mle, trace_ratio, fixed_variance_scale,
                   *, n, c):
    """Statistics of every variant of a chunk, (B,) arrays: remle, null: :class:`chunk_criteria.Projected` at the
    variant's REML lambda and at the null model's ML lambda; ml_criterion: the ML criterion at its ML lambda."""
    df = n - c - 1
    lam = jnp.exp(t_remle)
    beta, q = chunk_criteria.residual(remle)
    s2_e = q / df
    se = jnp.sqrt(s2_e / remle.xpx)  # [(X'H^-1X)^-1]_xx = 1 / x'Px
    wald = (beta / se) ** 2
    logl_remle = -0.5 * chunk_criteria.criterion(remle, n, c + 1, "REML")
    logl_mle = -0.5 * ml_criterion
    lrt = 2.0 * (logl_mle - null_logl_mle)
    score = n * null.xpy**2 / (null.ypy * null.xpx)
    s2_g = lam * s2_e
    fixed = beta**2 * fixed_variance_scale
    return dict(
        beta=beta, se=se, wald=wald, lrt=lrt, score=score,  # p-values: on the host, see _finished
        lambda_remle=lam, lambda_mle=jnp.exp(t_mle), s2_g=s2_g, s2_e=s2_e,
        logl_remle=logl_remle, logl_mle=logl_mle, logl_H1=logl_mle,
        pve=fixed / (fixed + s2_g * trace_ratio + s2_e), collinear_ratio=null.xpx,
    )


# ----------------------------------------------------------------------------------------------------------------
# a chunk: rotation + whole-chunk fits


class _Shared(NamedTuple):
    """Everything about covariates and phenotypes that does not depend on the variant."""

    eigenvalues: jnp.ndarray  # (m,)
    # [C Y]' and (U'[C Y])': the c covariates, then the P phenotypes, as rows (the left operands of products over
    # samples or rotated rows, contracting their last axis: see jaxlmm.chunk_criteria.ChunkData)
    cy_rows: jnp.ndarray  # (c+P, n)
    cy_rot_rows: jnp.ndarray  # (c+P, m)
    cy_null_gram: jnp.ndarray  # (P, c+1, c+1)  [C y]'(I - UU')[C y] per phenotype
    null_log_lambda_remle: jnp.ndarray  # (P,)
    null_log_lambda_mle: jnp.ndarray  # (P,)
    null_logl_mle: jnp.ndarray  # (P,)
    trace_ratio: jnp.ndarray  # ()  tr(K)/n


def _device_impute(raw, means, excluded, dtype=jnp.float64):
    """Mean imputation of a batch on the device. raw: (n, B) genotypes as they travel (integer counts, negative
    where missing, or floats with NaN where missing); means: (B,) each variant's mean over its observed values and
    excluded: (B,) bool, variants not to fit (padding, filtered), both from the host (:func:`_summary`). Returns the
    (n, B) matrix to fit in dtype, with a well-posed filler column in place of every excluded variant (a degenerate
    one would stall the batch)."""
    values = raw.astype(dtype)
    missing = raw < 0 if jnp.issubdtype(raw.dtype, jnp.integer) else jnp.isnan(values)
    filler = (jnp.arange(raw.shape[0]) % 2).astype(dtype)[:, None]
    return jnp.where(excluded, filler, jnp.where(missing, means.astype(dtype), values))


@partial(jax.jit, static_argnames=("c", "exact", "max_iter", "rotation_dtype", "block"),
         compiler_options=SCAN_COMPILER_OPTIONS)
def _fit_chunk(rotation_basis, shared: _Shared, raw, means, excluded, *, c, exact, max_iter, rotation_dtype, block):
    """raw: (n, B) genotypes (negative or NaN where missing), means and excluded: (B,) (see :func:`_device_impute`).
    Returns a (K, P, B) float64 array: the :data:`FIT_OUTPUTS` of every phenotype and variant of the batch, stacked
    so that a batch comes back to the host as one array.

    The batch is fitted ``block`` variants at a time (:func:`jaxlmm.scan._fit_block_cpu`), each block imputed and
    rotated by itself: splitting the raw batch into blocks moves a quarter of the bytes (int8) of splitting the
    rotated one, and the blocks' products are no slower (one core, N = 500: 6.7 -> 6.0 ms per chunk; mouse HS1940
    38.9 -> 33.9 ms). Each block's columns are sliced where they lie, not through a transposed copy of the whole
    batch (float64 genotypes, groups N = 2,000, batches of 1024: ~8% faster).

    rotation_basis is the kernel's basis in rotation_dtype (:func:`jaxlmm.structure.for_rotation`): U'X runs in that
    precision, everything after in float64.
    """
    dtype = shared.cy_rows.dtype
    n = jnp.asarray(raw.shape[0], dtype)
    b, blocks = block, raw.shape[1] // block

    def rotated(raw_b, means_b, excluded_b):
        """A block's genotypes in K's eigenbasis and the parts K does not reach (phenotype-independent)."""
        genotypes = _device_impute(raw_b, means_b, excluded_b, dtype)
        x_rot = structure.rotate(rotation_basis, genotypes.astype(rotation_dtype)).astype(dtype)  # (m, b)
        xx = jnp.sum(genotypes * genotypes, axis=0) - jnp.sum(x_rot * x_rot, axis=0)  # (b,)
        cy_x = shared.cy_rows @ genotypes - shared.cy_rot_rows @ x_rot  # (c+P, b): [C Y]'(I - UU') x
        return x_rot, cy_x, xx, jnp.var(genotypes, axis=0, ddof=1)  # var(x b) = b^2 var(x)

    def one_block(x_b, xc_b, xy_b, xx_b, fixed_scale, y_r, cy_gram, t_remle0, t_mle0, logl0):
        data = chunk_criteria.chunk_data(shared.eigenvalues, jnp.concatenate([shared.cy_rot_rows[:c], y_r[None]]).T,
                                         x_b, cy_gram, jnp.concatenate([xc_b, xy_b[None]]), xx_b, n)
        # the null model's REML and ML lambdas and both ends of the search interval: ratios shared by all variants
        # (matrix products)
        with jax.named_scope("null_points"):
            at_points = chunk_criteria.grid_projected(jnp.exp(jnp.stack([t_remle0, t_mle0, *LOG_LAMBDA_BOUNDS])), data)
        row = lambda stats, i: chunk_criteria.Projected(*(f[i] for f in stats))  # noqa: E731
        null_ml = row(at_points, 1)  # score test
        if exact:  # criteria and derivatives on the grid and at the null model's lambdas (matrix products)
            grid = _search_grid(t_remle0, t_mle0)
            with jax.named_scope("grid"):
                derivatives = chunk_criteria.grid_criterion_derivatives(grid, data)
            with jax.named_scope("hermite_start"):  # REML and ML side by side, (G, 2B): one pass, not two
                start, boundary, boundary_value, interior_value = _computed_once(
                    _hermite_start(grid, *(jnp.concatenate(pair, axis=1) for pair in zip(*derivatives))),
                    jnp.all(jnp.isfinite(grid)))
            start_remle, start_mle = start[:b], start[b:]
            # every evaluation is of gathered lanes (lane i fits variant i mod B; the first evaluation takes the B
            # REML lanes as one slice): no whole-batch evaluation of all 2B lanes
            with jax.named_scope("newton"):
                fit = _newton_both(
                    None, start_remle, start_mle, max_iter,
                    lambda t, index, reml_lanes: chunk_criteria.chunk_criterion_expansion(
                        t, chunk_criteria.select_variants(data, index % b), reml_lanes),
                    polish_xtol=POLISH_XTOL, has_aux=True, settled=partial(_boundary_wins, boundary_value),
                    skip=_boundary_certain(boundary_value, interior_value), first_lanes=b)
            edge = _choose_boundary(boundary_value, fit.value)
            optima = jnp.where(edge, boundary, fit.params)
            # statistics at the optima without another pass: the last evaluation's expansion carried over the
            # polishing step, or the exact grid values at the chosen end
            at_edge = chunk_criteria.Projected(*(jnp.where(boundary.reshape(2, b) > 0, f[3], f[2]).reshape(-1)
                                                 for f in at_points))  # (REML, ML) x variants
            final = chunk_criteria.Projected(*(jnp.where(edge, e, f) for e, f in zip(
                at_edge, chunk_criteria.extrapolated(fit.aux, fit.polish, c))))
            t_remle, t_mle = optima[:b], optima[b:]
            remle = chunk_criteria.Projected(*(f[:b] for f in final))
            ml_criterion = chunk_criteria.criterion(final, n, c + 1, "ML")[b:]
            converged = (fit.converged | edge)[:b] & (fit.converged | edge)[b:]
            iterations = fit.iterations[:b] + fit.iterations[b:]
        else:
            t_remle, t_mle = jnp.full(b, t_remle0), jnp.full(b, t_mle0)
            remle, ml_criterion = row(at_points, 0), chunk_criteria.criterion(null_ml, n, c + 1, "ML")
            converged, iterations = jnp.ones(b, bool), jnp.zeros(b, jnp.int32)
        tests = _variant_tests(remle, ml_criterion, null_ml, t_remle, t_mle, logl0, shared.trace_ratio, fixed_scale,
                               n=n, c=c)
        if not exact:
            tests["lrt"] = jnp.full(b, jnp.nan)
        return {**tests, "converged": converged, "iterations": iterations}

    per_phenotype = (shared.cy_rot_rows[c:], shared.cy_null_gram, shared.null_log_lambda_remle,
                     shared.null_log_lambda_mle, shared.null_logl_mle)

    def fit_block(parts):
        x_b, cy_x, xx_b, fixed_scale = rotated(*parts)
        xc_b, xy = cy_x[:c], cy_x[c:]
        if xy.shape[0] == 1:  # one phenotype: no batching pass over the traced fit (a third of the tracing time)
            return {k: v[None] for k, v in one_block(x_b, xc_b, xy[0], xx_b, fixed_scale,
                                                     *(a[0] for a in per_phenotype)).items()}
        return jax.vmap(lambda xy_p, *rest: one_block(x_b, xc_b, xy_p, xx_b, fixed_scale, *rest))(xy, *per_phenotype)

    def fit_block_at(i):  # the block's columns sliced where they lie: no transposed copy of the whole batch
        return fit_block(tuple(jax.lax.dynamic_slice_in_dim(a, i * b, b, axis=a.ndim - 1)
                               for a in (raw, means, excluded)))

    out = jax.lax.map(fit_block_at, jnp.arange(blocks))  # (blocks, P, block) each
    stacked = jnp.stack([out[key].astype(dtype) for key in FIT_OUTPUTS])  # (K, blocks, P, block)
    return jnp.moveaxis(stacked, 1, 2).reshape(stacked.shape[0], stacked.shape[2], -1)


# ----------------------------------------------------------------------------------------------------------------
# front door


def _null_models(eigenvalues, cy_rot, cy_gram, n, trace_ratio, max_iter):
    """REML and ML null fits per phenotype from U'[C y] (P, m, c+1) and [C y]'(I - UU')[C y] (P, c+1, c+1)."""
    out = {k: [] for k in NullModel._fields}
    c = cy_rot.shape[2] - 1
    null_fit = None  # one program for every phenotype (same shapes)
    for p in range(cy_rot.shape[0]):
        # numpy in: host arithmetic, where eager JAX operations would each compile a program once per process
        data = chunk_criteria.null_data(eigenvalues, cy_rot[p], cy_gram[p], np.asarray(n, cy_rot.dtype))
        if null_fit is None:
            null_fit = executables.compiled(_null_fit, "null_fit", (data,), {"max_iter": max_iter})
        lam, lam_mle, q, logl_remle, logl_mle, h = map(float, null_fit(data))
        s2_e = q / (n - c)
        out["lambda_remle"].append(lam)
        out["lambda_mle"].append(lam_mle)
        out["logl_remle"].append(logl_remle)
        out["logl_mle"].append(logl_mle)
        out["s2_g"].append(lam * s2_e)
        out["s2_e"].append(s2_e)
        # pve and its delta-method se from the REML curvature in lambda (GEMMA's definition)
        var_lambda = -1.0 / h if h < 0 else np.nan
        scaled = lam * trace_ratio
        out["pve"].append(scaled / (scaled + 1.0))
        out["pve_se"].append(trace_ratio / (scaled + 1.0) ** 2 * np.sqrt(var_lambda))
    return NullModel(**{k: np.asarray(v) for k, v in out.items()})


def center(K: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Double-centre a kinship: ``P K P`` with ``P = I - 11'/n`` (GEMMA's CenterMatrix), into ``out`` (a new array
    when None; K itself allowed: no (n, n) temporary then)."""
    out = np.subtract(K, K.mean(axis=0, keepdims=True), out=out)
    return np.subtract(out, out.mean(axis=1, keepdims=True), out=out)


def _column_chunks(genotypes, chunk_size, start=0, stop=None) -> Iterable[np.ndarray]:
    """The (n, b) chunks of genotypes (see :func:`scan_chunks`), read one after the other."""
    return (read() for _, read in _chunk_reads(genotypes, chunk_size, start, stop))


def _chunk_reads(genotypes, chunk_size, start=0, stop=None) -> Iterator[tuple[int, Callable[[], np.ndarray]]]:
    """(offset, read) per chunk: its first variant's position and a function returning it as a numpy array (for
    column-sliceable genotypes the slice is read, e.g. decoded from a ``.bed``, when it is called, in whatever
    thread calls it; an iterable's chunks are taken from it in order)."""
    if hasattr(genotypes, "shape") and hasattr(genotypes, "__getitem__"):
        stop = genotypes.shape[1] if stop is None else min(stop, genotypes.shape[1])
        for first in range(start, stop, chunk_size):
            yield first, partial(_read_columns, genotypes, first, min(first + chunk_size, stop))
    else:
        if start or stop is not None:
            raise validate.InputError("start/stop need genotypes with column slicing, not an iterable of chunks")
        offset = 0
        for chunk in map(np.asarray, genotypes):
            yield offset, partial(np.asarray, chunk)
            offset += chunk.shape[1] if chunk.ndim == 2 else 0


def _read_columns(genotypes, first: int, stop: int) -> np.ndarray:
    return np.asarray(genotypes[:, first:stop])


def _impute(chunk: np.ndarray, max_missing: float, min_maf: float):
    """Mean-impute missing values per variant; return imputed (n, b) float64, n_miss, af (freq. of the counted
    allele), status (strings), from :func:`_summary`: for scans that impute before their own device work
    (:mod:`jaxlmm.scan_mixed`)."""
    chunk = np.asarray(chunk)
    summary = _summary(chunk, np.zeros(chunk.shape[1], bool), min_maf, max_missing)
    values = with_nan(chunk, float)
    imputed = np.where(np.isnan(values), summary.means, values)
    return imputed, summary.n_miss, summary.af, np.asarray(STATUS_CODES, dtype=object)[summary.status]


class PreparedScan(NamedTuple):
    """Everything a scan needs before its first variant: the decomposed kernel, rotated covariates and phenotypes,
    the null models, and the compiled per-chunk fit. Built once by :func:`prepare_scan`; chunks of variants are then
    fitted by :func:`scan_chunks` (in any order, e.g. one share of a partitioned run).

    null: the per-phenotype null models; n: samples; covariates: c including the intercept; phenotypes: P;
    chunk_size: variants per chunk read and written; width: columns of the device batch a chunk is padded to (see
    :func:`_device_placement`).
    """

    null: NullModel
    n: int
    covariates: int
    phenotypes: int
    chunk_size: int
    min_maf: float
    max_missing: float
    fit_chunk: object  # (n, width) genotypes, (width,) means and excluded flags -> (K, P, width) fit outputs
    chunk_sharding: object  # None, or the shardings of a chunk's (n, width) genotypes and (width,) flags
    width: int
    min_hwe_p: float = 0.0


class ScanChunk(NamedTuple):
    """Results for variants offset .. offset + b - 1: columns name -> (P, b) arrays (status as strings), names as in
    COLUMNS except "variant" and "phenotype"."""

    offset: int
    columns: dict


def prepare_scan(
    y,
    covariates=None,
    *,
    kinship=None,
    groups=None,
    intercept: bool = True,
    mode: str = "exact",
    chunk_size: int | None = None,
    min_maf: float = 0.01,
    max_missing: float = 0.05,
    max_iter: int = 30,
    center_kinship: bool = True,
    rotation_dtype=jnp.float64,
    covariate_names=None,
    eigen_cache: str | None = None,
    min_hwe_p: float = 0.0,
    overwrite_kinship: bool = False,
    check_kinship: bool = True,
) -> PreparedScan:
    """Validate the model without variants, decompose its kernel and fit the null models (arguments as in
    :func:`scan`; covariate_names (c0,) name the covariate columns in messages; eigen_cache: a file prefix where
    the kinship's eigendecomposition is read from or written to, see :mod:`jaxlmm.io.eigen_cache`; min_hwe_p:
    variants whose Hardy-Weinberg exact p-value (:func:`jaxlmm.hwe.hwe_exact_pvalues`) is below it get status
    "hwe"; overwrite_kinship: the kinship, a float64 array the caller does not use again, may be overwritten, which
    saves the one (n, n) copy made otherwise (800 MB at n = 10,000), as scipy's ``overwrite_a``; check_kinship=False:
    the kinship is known finite and symmetric (the caller ran :func:`jaxlmm.validate.kinship` on it, e.g. to name
    its file's rows in messages), so that pass over it is not repeated (0.75 s at n = 10,000))."""
    if mode not in ("exact", "null"):
        raise validate.InputError(f"mode must be 'exact' or 'null', got {mode!r}")
    Y = np.asarray(y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
    chunk_size = default_chunk_size(Y.shape[0]) if chunk_size is None else chunk_size
    if int(chunk_size) < 1:
        raise validate.InputError(f"chunk_size must be a positive number of variants, got {chunk_size!r}")
    for p in range(Y.shape[1]):
        validate.response(Y[:, p], name="y" if Y.shape[1] == 1 else f"phenotype {p + 1}")
    n = Y.shape[0]
    cov = np.zeros((n, 0)) if covariates is None else np.asarray(covariates, dtype=float)
    cov = cov[:, None] if cov.ndim == 1 else cov
    names = (list(covariate_names) if covariate_names is not None
             else [f"covariate{j + 1}" for j in range(cov.shape[1])])
    if intercept:
        cov, names = np.c_[np.ones(n), cov], ["(Intercept)", *names]
    if cov.ndim == 2 and cov.shape[1] + 1 >= n:
        raise validate.InputError(f"{cov.shape[1]} covariates and a variant leave no residual degrees of freedom "
                                  f"with {n} samples")
    cov = validate.design(cov, n, names, what="covariates")
    if (kinship is None) == (groups is None):
        raise validate.InputError("give exactly one random effect: kinship= or groups=")
    with jax.enable_x64(True):
        if kinship is not None:
            basis, trace_ratio = _kinship_basis(kinship, n, center_kinship, eigen_cache, overwrite_kinship,
                                                check_kinship)
        else:
            term = structure.group_term(validate.groups(groups, n, "groups"))
            basis, trace_ratio = structure.spectral_basis(term), structure.mean_kernel_diagonal(term)
        prepared = _prepare_validated(Y, cov, trace_ratio, basis, mode, int(chunk_size), min_maf, max_missing,
                                      max_iter, rotation_dtype)
    return prepared._replace(min_hwe_p=float(min_hwe_p))


def scan(y, genotypes, covariates=None, *, variant_names=None, **options) -> ScanResult:
    """Fit ``y ~ covariates + variant_j + random effect`` for every variant j and test it (GEMMA ``-lmm 4`` tests).

    y:           (n,) or (n, P) phenotypes (finite; several phenotypes share one decomposition)
    genotypes:   (n, M) array-like (numpy, memmap, any object with ``.shape`` and column slicing; NaN = missing,
                 or a negative number in an integer array; mean-imputed per variant) or an iterable of (n, b) chunks
    covariates:  (n, c0) or None; an intercept is prepended unless ``intercept=False``
    variant_names: (M,) labels for the "variant" column (default v1, v2, ...)
    options (keyword only):
      kinship:     (n, n) relationship matrix, or groups: (n,) labels of a grouping factor ``(1|g)``
      intercept:   prepend an intercept column (default True)
      mode:        "exact" (per-variant REML/ML, default) or "null" (lambda fixed at the null REML estimate)
      chunk_size:  variants per batch (default: from the number of samples, :func:`default_chunk_size`)
      min_maf, max_missing: variants failing these (defaults 0.01, 0.05) get status "low_maf" / "too_many_missing"
                   and NaN statistics
      max_iter:    Newton iterations per variant (default 30)
      center_kinship: double-centre the kinship first, as GEMMA does (default True; see module docstring)
      rotation_dtype: dtype of the genotype rotation ``U'X`` (float64 default; float32 is about twice as fast on a
                   GPU and costs ~1e-7 relative in the rotated genotypes); the per-variant fits always run in float64
    Chunks are sharded over the variant axis across all JAX devices when there are several.
    Returns a :class:`ScanResult` with one row per (phenotype, variant), phenotype-major.
      random:      general random effects instead of kinship/groups (blocks from
                   :func:`jaxlmm.scan_mixed.random_blocks`: random slopes, crossed/nested factors, kinship beside
                   them): per-variant PLS fits, see :mod:`jaxlmm.scan_mixed` (y: (n,), exact REML/ML only)
    For large scans, :func:`prepare_scan` and :func:`scan_chunks` stream the same results chunk by chunk.
    """
    if options.get("random") is not None:
        from .scan_mixed import scan_mixed

        random = options.pop("random")
        unsupported = set(options) - {"intercept", "chunk_size", "min_maf", "max_missing"}
        if unsupported:
            raise validate.InputError(f"random= scans do not take {', '.join(sorted(unsupported))}")
        return scan_mixed(y, genotypes, covariates, blocks=random, variant_names=variant_names, **options)
    options.pop("random", None)
    prepared = prepare_scan(y, covariates, **options)
    chunks = list(scan_chunks(prepared, genotypes))
    M = sum(chunk.columns["n_miss"].shape[1] for chunk in chunks)
    names = np.asarray(variant_names) if variant_names is not None else np.array([f"v{j + 1}" for j in range(M)])
    if names.shape[0] != M:
        raise validate.InputError(f"{names.shape[0]} variant names for {M} variants")
    P = prepared.phenotypes
    columns = {"variant": np.tile(names, P), "phenotype": np.repeat(np.arange(1, P + 1), M)}
    for key in COLUMNS[2:]:
        parts = [chunk.columns[key] for chunk in chunks]
        columns[key] = np.concatenate(parts, axis=1).reshape(-1) if parts else np.empty(0)
    return ScanResult(columns, prepared.null, prepared.n, prepared.covariates)


CHUNK_CELLS = 1 << 21  # samples x variants of a chunk when no chunk size is given (see default_chunk_size)


def default_chunk_size(n: int) -> int:
    """Variants per chunk when none is given, for n samples: the largest power of two with n x chunk <=
    :data:`CHUNK_CELLS`, from 512 to 4096. Every chunk costs the host a fixed share of work besides its fits (its
    dispatch, statuses, p-values, table rows and commit), which shows when the fits are cheap, i.e. with few
    samples. Whole process on 2 cores, N = 500 M = 300k (4 alternated pairs each): 4.51 s with chunks of 512,
    4.13 s with 1024, 3.97 s with 2048, 3.80 s with 4096; mouse HS1940 (n = 1410): 1.73 s with 512 or 1024.
    Results do not depend on it (the same table byte for byte)."""
    return min(4096, max(512, _power_of_two_at_most(CHUNK_CELLS // max(int(n), 1))))


def _power_of_two_at_most(x: int) -> int:
    """The largest power of two <= x (1 for x < 2)."""
    return 1 << max(int(x), 1).bit_length() - 1


FIT_BLOCK_CELLS_CPU = 64 * 1409  # m x variants per Newton block on CPU: its (m, 2 x block) arrays stay in cache


def _fit_block_cpu(m: int) -> int:
    """Variants per Newton block on CPU: the largest power of two with m x block <= FIT_BLOCK_CELLS_CPU (at least
    16), so that a block's (m, 2 x block) float64 arrays stay about the size of one core's 1 MB L2 cache. Measured
    on a 512-variant chunk, one core: mouse HS1940 (m = 1409) 69 ms with blocks of 64, 73 ms with 32 or 128, 104 ms
    with 256; N = 500 (m = 499) 14.8 ms with 64 or 128, 17.0 ms with 256. Whole process, N = 500 M = 300k, blocks
    of 128 against 256: 8.67-8.85 s against 9.22-10.28 s."""
    return max(16, _power_of_two_at_most(FIT_BLOCK_CELLS_CPU // max(m, 1)))


def _device_placement(chunk_size: int, m: int):
    """Device batch layout for chunks of chunk_size variants of models with m rotated rows. Returns (chunk
    shardings, replicated sharding, width, block): chunks are padded to ``width`` columns, a multiple of ``block``
    times the device count, and sharded over the variant axis when JAX sees several devices (the shardings of a
    chunk's (n, width) genotypes and (width,) flags; else None and None).
    ``block`` is the number of variants fitted together: cache-sized on CPU (:func:`_fit_block_cpu`), the whole
    chunk per device on accelerators."""
    devices = jax.local_devices()  # in a multi-process run each process scans its own share on its own devices
    per_device = -(-chunk_size // len(devices))
    block = min(per_device, _fit_block_cpu(m)) if devices[0].platform == "cpu" else per_device
    width = -(-chunk_size // (block * len(devices))) * block * len(devices)
    if len(devices) == 1:
        return None, None, width, block
    mesh = jax.sharding.Mesh(np.asarray(devices), ("variants",))
    spec = jax.sharding.PartitionSpec
    by_variant = (jax.sharding.NamedSharding(mesh, spec(None, "variants")),  # (n, width) genotypes
                  jax.sharding.NamedSharding(mesh, spec("variants")))  # (width,) flags
    return by_variant, jax.sharding.NamedSharding(mesh, spec()), width, block


def _kinship_basis(kinship, n: int, center_kinship: bool, eigen_cache, overwrite: bool, check: bool = True):
    """(eigenbasis, tr(K) / n) of the kinship the scan decomposes: symmetrized, centred when asked (GEMMA's
    CenterMatrix), validated (its eigenvalues: :func:`jaxlmm.structure.decompose`). One (n, n) array is made, and
    decomposed in place, or none with ``overwrite`` (see :func:`prepare_scan`); check=False: the kinship is known
    finite and symmetric, only its size is checked."""
    K = validate.kinship(kinship, n, check_psd=False, overwrite=overwrite, check_values=check)  # a copy, or its own
    if center_kinship:
        center(K, out=K)
    trace_ratio = float(np.trace(K) / n)
    if eigen_cache is None:
        return structure.decompose(K, "kinship", overwrite=True), trace_ratio
    from .io.eigen_cache import cached_basis

    return cached_basis(K, eigen_cache, "kinship", overwrite=True), trace_ratio


def _prepare_validated(Y, cov, trace_ratio, basis, mode, chunk_size, min_maf, max_missing, max_iter, rotation_dtype):
    n, c = cov.shape
    eigenvalues = jax.device_put(structure.eigenvalues(basis))  # a host basis's too: kept programs are keyed by it
    cy = np.concatenate([np.broadcast_to(cov, (Y.shape[1], n, c)), Y.T[:, :, None]], axis=2)  # (P, n, c+1)
    cy_rot = structure.rotate_host(basis, cy.transpose(1, 0, 2).reshape(n, -1)).reshape(
        -1, Y.shape[1], c + 1).transpose(1, 0, 2)  # (P, m, c+1)
    cy_gram = np.einsum("pni,pnj->pij", cy, cy) - np.einsum("pmi,pmj->pij", cy_rot, cy_rot)
    null = _null_models(eigenvalues, cy_rot, cy_gram, n, trace_ratio, max_iter)
    shared = jax.device_put(_Shared(
        eigenvalues=eigenvalues, cy_rows=np.concatenate([cov.T, Y.T]),
        cy_rot_rows=np.concatenate([cy_rot[0, :, :c].T, cy_rot[:, :, c]]), cy_null_gram=cy_gram,
        null_log_lambda_remle=np.log(null.lambda_remle), null_log_lambda_mle=np.log(null.lambda_mle),
        null_logl_mle=null.logl_mle, trace_ratio=np.asarray(trace_ratio, np.float64),
    ))
    chunk_sharding, replicated, width, block = _device_placement(chunk_size, int(eigenvalues.shape[0]))
    if replicated is not None:
        basis, shared = jax.device_put((basis, shared), replicated)
    rotation_basis = structure.for_rotation(basis, rotation_dtype)
    fit = partial(_fit_chunk, rotation_basis, shared, **_fit_options(c, mode, max_iter, rotation_dtype, block))
    return PreparedScan(null, n, c, Y.shape[1], chunk_size, min_maf, max_missing, fit, chunk_sharding, width)


def _fit_options(c, mode, max_iter, rotation_dtype, block) -> dict:
    """The static arguments of :func:`_fit_chunk`."""
    return dict(c=c, exact=mode == "exact", max_iter=max_iter, rotation_dtype=jnp.dtype(rotation_dtype),
                block=block)


def preload_kinship_scan(n: int, covariates: int, phenotypes: int, rank: int, genotype_dtype, *, mode="exact",
                         chunk_size=None, max_iter=30, rotation_dtype=jnp.float64):
    """Start loading the kept programs (:func:`jaxlmm.executables.preload`) of a kinship scan that
    :func:`prepare_scan` and :func:`scan_chunks` are about to run, before its kinship is read and decomposed: n
    samples, ``covariates`` columns including the intercept, P phenotypes, a kinship of ``rank`` (its number of
    kept eigenvalues: n - 1 for a centred kinship of full rank), genotype chunks of ``genotype_dtype``; options as
    in :func:`prepare_scan`. Their loads (0.25 s for mouse HS1940, on one core without the GIL) then overlap the
    reading of the kinship. Returns how many programs are loading. A wrong guess (another rank, covariates dropped
    as collinear) only loads a program that is not used."""
    with jax.enable_x64(True):
        chunk_size = default_chunk_size(n) if chunk_size is None else chunk_size
        sharded, _, width, block = _device_placement(chunk_size, rank)
        if sharded is not None:  # chunks sharded over several devices: their programs are not kept
            return 0
        on_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        like = lambda *shape, dtype=jnp.float64: jax.ShapeDtypeStruct(shape, dtype, sharding=on_device)  # noqa: E731
        c, p, m = covariates, phenotypes, rank
        null = chunk_criteria.null_data(like(m), np.zeros((m, c + 1)), np.zeros((c + 1, c + 1)), np.zeros(()))
        basis = structure.RotationRows(like(m, n, dtype=rotation_dtype), like(m, dtype=rotation_dtype))
        shared = _Shared(like(m), like(c + p, n), like(c + p, m), like(p, c + 1, c + 1), like(p), like(p), like(p),
                         like())
        return (executables.preload("null_fit", (null,), {"max_iter": max_iter})
                + executables.preload("fit_chunk", (basis, shared, *_batch_arguments(n, width, genotype_dtype)),
                                      _fit_options(c, mode, max_iter, rotation_dtype, block)))


def _batch_arguments(n: int, width: int, dtype, pieces=()):
    """The per-batch arguments of :func:`_fit_chunk`: (n, width) genotypes in their transfer type, (width,) means
    and excluded flags. pieces: (columns (n, k), means (k,), excluded (k,)) each, at most width columns in all,
    copied into the batch one after the other, once (the fit may run after the caller reuses its arrays); the
    padding after them is excluded."""
    raw = np.empty((n, width), transfer_dtype(dtype))  # widened on the device
    means, excluded = np.zeros(width), np.ones(width, bool)
    filled = 0
    for piece_columns, piece_means, piece_excluded in pieces:
        k = piece_columns.shape[1]
        raw[:, filled:filled + k] = piece_columns
        means[filled:filled + k], excluded[filled:filled + k] = piece_means, piece_excluded
        filled += k
    raw[:, filled:] = 0
    return raw, means, excluded


CONCURRENT_CHUNKS_CPU = 2  # chunk fits running at once on CPU (one thread each)
PACK_FILTERED = True  # only variants that pass the filters go to the device, packed into full batches


class _Summary(NamedTuple):
    """A chunk's variants on the host before any fit, each field (b,): n_miss missing calls, means of the observed
    values (the imputed value), af (means / 2, NaN when nothing was observed), spread (max - min of the observed
    values, 0 when none), status (codes into :data:`STATUS_CODES`: why a variant is not fitted, 0 = fitted)."""

    n_miss: np.ndarray
    means: np.ndarray
    af: np.ndarray
    spread: np.ndarray
    status: np.ndarray


def _count_sums(chunk: np.ndarray):
    """(n_miss, total, smallest, largest) of integer counts (n, b), negative where missing: missing calls, the sum,
    minimum and maximum of the observed values (integer arrays, (b,); smallest and largest are meaningless where
    nothing was observed). Integer sums are exact. Written for speed on the scan's int8 chunks (0.35 against 0.8 ms
    per 500 x 512 chunk with masked sums, which cast and copy): missing calls of -1 (PLINK) are summed as they are
    and added back; the smallest observed value is the minimum of the unsigned view, where negatives sort last."""
    n = chunk.shape[0]
    accumulator = np.int32 if chunk.dtype.itemsize == 1 and n < 2**23 else np.int64  # |value| <= 128
    largest = chunk.max(axis=0, initial=np.iinfo(chunk.dtype).min)
    if chunk.dtype.kind == "u":  # no missing calls
        return (np.zeros(chunk.shape[1], accumulator), chunk.sum(axis=0, dtype=np.int64),
                chunk.min(axis=0, initial=np.iinfo(chunk.dtype).max), largest)
    missing = chunk < 0
    n_miss = missing.view(np.int8).sum(axis=0, dtype=accumulator)
    if chunk.min(initial=0) >= -1:
        total = chunk.sum(axis=0, dtype=accumulator) + n_miss
    else:
        total = np.where(missing, 0, chunk).sum(axis=0, dtype=accumulator)
    smallest = chunk.view(chunk.dtype.str.replace("i", "u")).min(axis=0, initial=np.iinfo(chunk.dtype).max)
    return n_miss, total, smallest.astype(np.int64), largest


def _summary(chunk: np.ndarray, hwe_failed: np.ndarray, min_maf: float, max_missing: float) -> _Summary:
    """:class:`_Summary` of a chunk (n, b) of integer counts (negative where missing, summed exactly) or floats (NaN
    where missing, summed in float64), with its variants' statuses (:func:`_variant_status`); hwe_failed: (b,)
    bool. The scan fits the variants whose status is 0 ("ok"), imputing their missing calls with ``means``."""
    n = chunk.shape[0]
    if is_counts(chunk):
        n_miss, total, smallest, largest = _count_sums(chunk)
        n_miss = n_miss.astype(np.int64)
        spread = np.where(n_miss < n, largest.astype(np.int64) - smallest, 0).astype(np.float64)
    else:
        chunk = chunk if chunk.dtype.kind == "f" else chunk.astype(np.float64)  # e.g. bool
        missing = np.isnan(chunk)
        n_miss = np.count_nonzero(missing, axis=0)
        total = np.where(missing, 0.0, chunk).sum(axis=0, dtype=np.float64)
        with np.errstate(invalid="ignore"):  # inf - inf where nothing was observed
            spread = np.where(n_miss < n, np.fmax.reduce(chunk, axis=0, initial=-np.inf)
                              - np.fmin.reduce(chunk, axis=0, initial=np.inf), 0.0).astype(np.float64)
    n_obs = n - n_miss
    means = total / np.maximum(n_obs, 1)
    af = np.where(n_obs > 0, means / 2.0, np.nan)
    status = _variant_status(n, n_miss, af, spread, hwe_failed, min_maf, max_missing)
    return _Summary(n_miss, means, af, spread, status)


READ_AHEAD_MAX = 8  # chunks read and summarized ahead at most (host memory: a few chunks' worth per thread)


def _read_ahead_threads(platform: str) -> int:
    """Threads reading and summarizing chunks ahead of the fits: none on a CPU, where the fits keep every core busy
    (chunks are read in the scan's own thread); the host's cores when the fits run on an accelerator, where the
    host's work per chunk sets the pace (10,000 x 8192 int8: 0.12 s for the summary alone in one thread, ~15 s of
    host time per million variants; a PLINK chunk's decoding and transposition as much again)."""
    if platform == "cpu":
        return 0
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Read(NamedTuple):
    """A chunk as the scan fits it: (n, b) genotypes, their :class:`_Summary`, and the first variant's position."""

    offset: int
    chunk: np.ndarray
    summary: _Summary


def _read_and_summarized(offset: int, read: Callable[[], np.ndarray], prepared: PreparedScan,
                         contiguous: bool) -> _Read:
    """Read one chunk (see :func:`_chunk_reads`), check its shape, and summarize it (Hardy-Weinberg p-values
    included when asked for); contiguous: in C order (a PLINK chunk is a transposed view), as a read ahead in
    another thread should leave it."""
    chunk = read()
    if chunk.ndim != 2 or chunk.shape[0] != prepared.n:
        raise validate.InputError(f"genotype chunk at variant {offset + 1} has shape {chunk.shape}, "
                                  f"expected ({prepared.n}, b)")
    chunk = np.ascontiguousarray(chunk) if contiguous else chunk
    hwe_failed = np.zeros(chunk.shape[1], bool)
    if prepared.min_hwe_p > 0:
        from .hwe import hwe_exact_pvalues

        hwe_failed = hwe_exact_pvalues(with_nan(chunk, float)) < prepared.min_hwe_p  # NaN never fails
    return _Read(offset, chunk, _summary(chunk, hwe_failed, prepared.min_maf, prepared.max_missing))


def _read_ahead(reads: Iterator, prepared: PreparedScan, pool, depth: int) -> Iterator[_Read]:
    """:func:`_read_and_summarized` of every (offset, read) in order: in this thread without a pool, else up to
    ``depth`` chunks ahead in the pool's threads (numpy's decoding, copies and reductions release the GIL)."""
    if pool is None:
        yield from (_read_and_summarized(offset, read, prepared, False) for offset, read in reads)
        return
    pending = collections.deque()
    try:
        for offset, read in reads:
            pending.append(pool.submit(_read_and_summarized, offset, read, prepared, True))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class _Waiting:
    """An input chunk whose rows are not yielded yet: its :class:`_Summary`, the fit outputs gathered so far ((K, P,
    b) as :func:`_fit_chunk`'s, NaN for variants not fitted), and how many fitted variants are still to come back."""

    def __init__(self, offset: int, b: int, summary: _Summary, remaining: int):
        self.offset, self.b, self.summary, self.remaining = offset, b, summary, remaining
        self.outputs = None

    def take(self, out: np.ndarray, rows, columns) -> None:
        """Put a batch's results for this chunk's variants ``rows`` (the batch's ``columns``; index arrays or
        slices) in place."""
        if self.outputs is None:
            self.outputs = np.full(out.shape[:-1] + (self.b,), np.nan)
        self.outputs[..., rows] = out[..., columns]
        self.remaining -= len(range(self.b)[rows]) if isinstance(rows, slice) else rows.size


def _as_slice(index: np.ndarray):
    """Ascending positions (no repeats) as a slice when they are consecutive (numpy copies a slice of columns
    faster than it gathers them), else as they are."""
    if index.size and index[-1] - index[0] == index.size - 1:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def scan_chunks(prepared: PreparedScan, genotypes, start: int = 0, stop: int | None = None) -> Iterator[ScanChunk]:
    """Fit and test variants start .. stop - 1 of genotypes, one :class:`ScanChunk` per chunk of
    ``prepared.chunk_size`` variants, in order. The next chunks are read and dispatched while earlier ones are
    fitted. Results of a variant do not depend on start/stop when start is a multiple of the chunk size.

    genotypes: (n, M) array-like with column slicing (start/stop apply), or an iterable of (n, b) chunks; floats
    with NaN for missing values, or integers (e.g. int8 allele counts) with negative numbers for missing values.
    Chunks travel to the device in their own type (int8: a quarter of the bytes of float32) and are imputed there.

    Every chunk is summarized on the host first (:func:`_summary`: missing calls, means, filters): variants that
    fail the filters (monomorphic, low MAF, missing calls, Hardy-Weinberg) are not sent at all, and those that pass
    are packed into full device batches across chunk boundaries (:data:`PACK_FILTERED`), with their means to impute
    missing calls on the device; GEMMA and JAMMA skip them too. Mouse HS1940: 1,458 of 12,226 variants are
    filtered, 24 batches become 22.

    On CPU, :data:`CONCURRENT_CHUNKS_CPU` batches are fitted at once, each launched from its own thread: XLA:CPU runs
    the launches of one thread one after the other, and much of a chunk's fit is a chain of operations that each
    keep one core busy (N = 500, 2 cores: 10.5 -> 9.8 ms per 512-variant chunk). Chunks are read and summarized in
    this thread between launches. On an accelerator the host's work sets the pace instead, so chunks are read
    (e.g. decoded from a ``.bed``) and summarized ahead, several at once, by a pool of the host's cores
    (:func:`_read_ahead`).
    """
    n, width = prepared.n, prepared.width
    waiting, batches, packing = collections.deque(), collections.deque(), []  # packing: (_Waiting, rows, columns)
    programs = {}
    platform = jax.devices()[0].platform
    concurrent = 1 if prepared.chunk_sharding is not None or platform != "cpu" else CONCURRENT_CHUNKS_CPU
    launcher = ThreadPoolExecutor(concurrent, thread_name_prefix="jaxlmm-chunk") if concurrent > 1 else None
    threads = _read_ahead_threads(platform)
    reader = ThreadPoolExecutor(threads, thread_name_prefix="jaxlmm-read") if threads else None
    _import_in_background("scipy.special")  # for _p_values; 0.15 s, while the first chunk is loaded and fitted

    def dispatch(parts, pieces) -> None:
        """Send one batch: pieces of (n, k) genotype columns with their k means and excluded flags, at most width
        columns in all, padded to the width (see :func:`_batch_arguments`)."""
        arguments = _batch_arguments(n, width, pieces[0][0].dtype, pieces)
        with jax.enable_x64(True):
            if prepared.chunk_sharding is not None:
                by_variant, flags = prepared.chunk_sharding
                arguments = jax.device_put(arguments, (by_variant, flags, flags))
                program = prepared.fit_chunk
            else:
                dtype = arguments[0].dtype
                if dtype not in programs:  # kept between runs when a folder is set (jaxlmm.executables)
                    fit = prepared.fit_chunk
                    programs[dtype] = partial(executables.compiled(
                        fit.func, "fit_chunk", (*fit.args, *arguments), fit.keywords), *fit.args)
                program = programs[dtype]
            # asynchronous either way: runs while the next chunks are read
            batches.append((parts, program(*arguments) if launcher is None else
                            launcher.submit(_fitted, program, *arguments)))

    def dispatch_packed(final: bool) -> None:
        """Send full batches of the packed variants (and, when final, what is left)."""
        while packing and (final or sum(rows.size for _, rows, _, _ in packing) >= width):
            parts, pieces, filled = [], [], 0
            while packing and filled < width:
                chunk, rows, columns, means = packing.pop(0)
                take = min(width - filled, rows.size)
                if take < rows.size:
                    packing.insert(0, (chunk, rows[take:], columns[:, take:], means[take:]))
                parts.append((chunk, _as_slice(rows[:take]), slice(filled, filled + take)))
                pieces.append((columns[:, :take], means[:take], False))
                filled += take
            dispatch(parts, pieces)

    def completed() -> Iterator[ScanChunk]:
        """The leading input chunks whose fitted variants are all back, in order."""
        while waiting and waiting[0].remaining == 0:
            yield _finished(prepared, waiting.popleft())

    def collect_oldest() -> Iterator[ScanChunk]:
        parts, dispatched = batches.popleft()
        out = _fetched(dispatched)
        for chunk, rows, columns in parts:
            chunk.take(out, rows, columns)
        yield from completed()

    try:
        reads = _chunk_reads(genotypes, prepared.chunk_size, start, stop)
        for offset, chunk, summary in _read_ahead(reads, prepared, reader, min(threads, READ_AHEAD_MAX)):
            b = chunk.shape[1]
            fitted = np.flatnonzero(summary.status == 0)
            waiting.append(_Waiting(offset, b, summary, fitted.size if PACK_FILTERED else b))
            if not PACK_FILTERED:
                dispatch([(waiting[-1], slice(0, b), slice(0, b))], [(chunk, summary.means, summary.status != 0)])
            elif fitted.size:
                packing.append((waiting[-1], fitted, chunk if fitted.size == b else chunk[:, fitted],
                                summary.means[fitted]))
            dispatch_packed(final=False)
            while len(batches) > concurrent:
                yield from collect_oldest()
            yield from completed()  # e.g. nothing in it to fit
        dispatch_packed(final=True)
        while batches:
            yield from collect_oldest()
        yield from completed()  # chunks with no variant to fit
    finally:
        for pool in (launcher, reader):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _fitted(program, *arguments):
    """A chunk fit launched and waited for in a launcher thread (float64 on, as JAX's setting is per thread)."""
    with jax.enable_x64(True):
        return jax.block_until_ready(program(*arguments))


def _import_in_background(module: str) -> None:
    """Start importing a module in a daemon thread (an ``import`` of it elsewhere waits for that one to finish)."""
    import importlib
    import sys
    import threading

    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


def _p_values(statistics: dict, df: int) -> dict:
    """p_wald, p_lrt, p_score from the Wald, LRT and score statistics (F(1, df), chi-square(1), F(1, df)).

    On the host with scipy's incomplete beta and complementary error functions (cephes, accurate far into the
    tail), the same formulas as :mod:`jaxlmm.pvalues`: on CPU a fifth of the device time of a chunk fit at N = 500
    moves off the critical path (JAX's betainc costs ~5 us per value). The chi-square(1) tail is
    ``erfc(sqrt(x / 2))``: scipy's ``chdtrc`` (incomplete gamma) takes 0.5 us per value, 0.28 s of a
    300,000-variant scan, erfc a hundredth of that (they agree to 2e-13 relative down to 1e-300)."""
    from scipy.special import erfc, fdtrc

    with np.errstate(invalid="ignore"):
        return {"p_wald": fdtrc(1.0, df, np.maximum(statistics["wald"], 0.0)),
                "p_lrt": erfc(np.sqrt(0.5 * np.maximum(statistics["lrt"], 0.0))),
                "p_score": fdtrc(1.0, df, np.maximum(statistics["score"], 0.0))}


_CODE = {name: code for code, name in enumerate(STATUS_CODES)}
_STATUS_TEXT = np.asarray(STATUS_CODES)


def _variant_status(n, n_miss, af, spread, hwe_failed, min_maf, max_missing) -> np.ndarray:
    """Why each variant is (not) fitted, as codes into :data:`STATUS_CODES` (int8, 0 = "ok": fitted), from its
    summaries (:class:`_Summary`); the last matching reason wins."""
    status = np.zeros(n_miss.shape[0], np.int8)
    with np.errstate(invalid="ignore"):
        if min_maf > 0:
            status[~(np.minimum(af, 1.0 - af) >= min_maf)] = _CODE["low_maf"]
        status[n_miss / n > max_missing] = _CODE["too_many_missing"]
        status[~(spread > 0)] = _CODE["monomorphic"]
    status[n_miss == n] = _CODE["all_missing"]
    status[(status == 0) & hwe_failed] = _CODE["hwe"]
    return status


def _fetched(dispatched) -> np.ndarray:
    """A batch's fit outputs on the host (dispatched: the fit's output, or a future of it)."""
    if isinstance(dispatched, Future):
        dispatched = dispatched.result()
    return np.asarray(dispatched)


_NOT_FITTED = {"converged": 1, "iterations": 0}  # the rows of variants that were not fitted; other columns NaN


def _finished(prepared: PreparedScan, chunk: _Waiting) -> ScanChunk:
    """One input chunk's rows: every variant's final status (its summary's, or collinear or not converged), the fit
    outputs of those fitted, the p-values, and NaN statistics for variants filtered out."""
    P, b, df = prepared.phenotypes, chunk.b, prepared.n - prepared.covariates - 1
    summary = chunk.summary
    fitted = summary.status == 0
    fits = chunk.outputs if chunk.outputs is not None else np.full((len(FIT_OUTPUTS), P, b), np.nan)
    out = dict(zip(FIT_OUTPUTS, fits))
    out.update(_p_values(out, df))
    for key, default in _NOT_FITTED.items():
        out[key] = np.where(fitted, out[key], default).astype(bool if key == "converged" else int)
    ratio = out["collinear_ratio"]
    reference = np.maximum(1.0, ratio[:, fitted].max(axis=1, initial=1.0))[:, None]  # the chunk's fitted variants
    status = np.broadcast_to(summary.status, (P, b)).copy()
    status[(status == 0) & (ratio <= 1e-8 * reference)] = _CODE["collinear"]
    status[(status == 0) & ~out["converged"]] = _CODE["not_converged"]
    filtered = (status != 0) & (status != _CODE["not_converged"])
    columns = {key: np.broadcast_to(getattr(summary, key), (P, b)).copy() for key in ("n_miss", "af")}
    for key in COLUMNS[4:-1]:
        columns[key] = out[key] if key in _NOT_FITTED else np.where(filtered, np.nan, out[key])
    columns["status"] = _STATUS_TEXT[status]
    return ScanChunk(chunk.offset, columns)
