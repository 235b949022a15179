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

lambda = s2_g / s2_e is searched on GEMMA's interval [1e-5, 1e5]: a 16-point log grid (plus the null model's
lambda) picks the starting point, so a multimodal criterion does not trap the search; Newton steps refine it; an
optimum beyond the interval is reported at its end, as GEMMA does.

Modes: ``"exact"`` re-estimates lambda per variant; ``"null"`` keeps the null model's REML lambda for every variant
(EMMAX/GCTA-style, fast, approximate; p_lrt is not computed).
"""

from __future__ import annotations

from functools import partial
from typing import Iterable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import chunk_criteria, structure, validate
from .chunk_criteria import ChunkData
from .likelihood import (SpectralData, gls, profiled_criterion_from_stats, spectral_profiled_criterion_at_ratio,
                         spectral_stats)
from .optimize import minimize_elementwise
from .pvalues import chi2_1_sf, f1_sf

LOG_LAMBDA_BOUNDS = (float(np.log(1e-5)), float(np.log(1e5)))
GRID_POINTS = 16
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
# one variant, one phenotype (vmapped below)


def _reml(ratio, data):
    return spectral_profiled_criterion_at_ratio(ratio, data, "REML")


def _ml(ratio, data):
    return spectral_profiled_criterion_at_ratio(ratio, data, "ML")


_BATCHED = SpectralData(None, 0, 0, None)  # a batch of SpectralData: rotated data and grams per element


def _batched_criterion(log_lambda, data, method):
    """Criterion of every model of a SpectralData batch: log_lambda (B,), data batched over its first axis."""
    return jax.vmap(lambda t, d: spectral_profiled_criterion_at_ratio(jnp.exp(t), d, method),
                    in_axes=(0, _BATCHED))(log_lambda, data)


def _batched_both(log_lambda, data):
    """(REML, ML) criteria of a SpectralData batch at log_lambda (B,), from one set of weighted statistics."""
    def one(t, d):
        stats = spectral_stats(jnp.exp(t), d)
        return profiled_criterion_from_stats(stats, d.n, "REML"), profiled_criterion_from_stats(stats, d.n, "ML")
    return jax.vmap(one, in_axes=(0, _BATCHED))(log_lambda, data)


def _chunk_both(log_lambda, data: ChunkData):
    """(REML, ML) criteria of every variant of a chunk at log_lambda (B,), from one weighted Gram."""
    return _both_from_projected(chunk_criteria.projected(jnp.exp(log_lambda), data), data)


def _both_from_projected(stats, data: ChunkData):
    p = data.shared.shape[1]
    return chunk_criteria.criterion(stats, data.n, p, "REML"), chunk_criteria.criterion(stats, data.n, p, "ML")


def _log_lambda_grid():
    return jnp.linspace(*LOG_LAMBDA_BOUNDS, GRID_POINTS)


def _mapped_grid(both, batch_shape):
    """(REML, ML) criteria (G, B) on the log lambda grid, one grid point at a time (lax.map) through ``both``."""
    return jax.lax.map(lambda t: both(jnp.broadcast_to(t, batch_shape)), _log_lambda_grid())


def _chunk_grid(data: ChunkData):
    """(REML, ML) criteria (G, B) of every variant of a chunk on the grid: the grid's weights are shared by all
    variants, so it costs a few matrix products (:func:`jaxlmm.chunk_criteria.grid_projected`)."""
    return _both_from_projected(chunk_criteria.grid_projected(jnp.exp(_log_lambda_grid()), data), data)


def _grid_starts(grid_values, both, starts_remle, starts_mle):
    """Best REML and ML starting points per model among a 16-point log grid on [1e-5, 1e5] and the given starts.

    grid_values: (REML, ML) criteria (G, B) on the grid; both: log_lambda (B,) -> (REML (B,), ML (B,))."""
    grid = _log_lambda_grid()
    grid_remle, grid_mle = grid_values
    start_remle, _ = both(starts_remle)
    _, start_mle = both(starts_mle)

    def pick(values, start_values, starts):
        best_grid = grid[jnp.argmin(values, axis=0)]
        return jnp.where(start_values <= jnp.min(values, axis=0), starts, best_grid)

    return pick(grid_remle, start_remle, starts_remle), pick(grid_mle, start_mle, starts_mle)


def _optimize_log_lambdas(criterion, both, grid_values, starts_remle, starts_mle, max_iter, derivatives=None):
    """Per-model REML and ML optima of log lambda on GEMMA's interval [1e-5, 1e5]: grid start, then elementwise
    Newton (optax). criterion(log_lambda (B,), method) -> (B,), separable; both, grid_values as in
    :func:`_grid_starts`; starts: (B,); derivatives(log_lambda, method) -> (value, gradient, curvature) when the
    caller has them cheaper than forward mode. Returns two ElementwiseResults."""
    t_remle, t_mle = _grid_starts(grid_values, both, starts_remle, starts_mle)
    results = []
    for method, start in (("REML", t_remle), ("ML", t_mle)):
        given = None if derivatives is None else partial(derivatives, method=method)
        results.append(minimize_elementwise(partial(criterion, method=method), start, *LOG_LAMBDA_BOUNDS,
                                            max_iter=max_iter, derivatives=given))
    return tuple(results)


@partial(jax.jit, static_argnames=("max_iter",))
def _null_fit(data: SpectralData, max_iter):
    """One phenotype's null model (no variant) in one compiled call: REML and ML optima of log lambda (grid, then
    Newton, as for variants), q at the REML optimum, both log-likelihoods, and the REML log-likelihood's second
    derivative in lambda (for the pve se). Returns a tuple of scalars."""
    batch = jax.tree.map(lambda a: a[None], data)._replace(eigenvalues=data.eigenvalues, n=data.n)
    both = partial(_batched_both, data=batch)
    start = jnp.zeros(1, data.rotated.dtype)
    remle, mle = _optimize_log_lambdas(lambda t, method: _batched_criterion(t, batch, method), both,
                                       _mapped_grid(both, start.shape), start, start, max_iter)
    lam, lam_mle = jnp.exp(remle.params[0]), jnp.exp(mle.params[0])
    q = gls(spectral_stats(lam, data)).q
    curvature = jax.hessian(lambda l: -0.5 * _reml(l, data))(lam)
    return lam, lam_mle, q, -0.5 * _reml(lam, data), -0.5 * _ml(lam_mle, data), curvature


def _variant_tests(data: ChunkData, t_remle, t_mle, null_log_lambda_mle, null_logl_mle, trace_ratio,
                   fixed_variance_scale, *, c):
    """Statistics of every variant of a chunk given their REML and ML log lambdas (B,); (B,) arrays out."""
    n = data.n
    df = n - c - 1
    lam = jnp.exp(t_remle)
    stats = chunk_criteria.projected(lam, data)
    beta, q = chunk_criteria.residual(stats)
    s2_e = q / df
    se = jnp.sqrt(s2_e / stats.xpx)  # [(X'H^-1X)^-1]_xx = 1 / x'Px
    wald = (beta / se) ** 2
    logl_remle = -0.5 * chunk_criteria.criterion(stats, n, c + 1, "REML")
    logl_mle = -0.5 * chunk_criteria.chunk_criterion(t_mle, data, "ML")
    lrt = 2.0 * (logl_mle - null_logl_mle)
    null = chunk_criteria.projected(jnp.exp(null_log_lambda_mle), data)
    score = n * null.xpy**2 / (null.ypy * null.xpx)
    s2_g = lam * s2_e
    fixed = beta**2 * fixed_variance_scale
    return dict(
        beta=beta, se=se, wald=wald, p_wald=f1_sf(wald, df), p_lrt=chi2_1_sf(lrt), p_score=f1_sf(score, df),
        lambda_remle=lam, lambda_mle=jnp.exp(t_mle), s2_g=s2_g, s2_e=s2_e,
        logl_remle=logl_remle, logl_mle=logl_mle, logl_H1=logl_mle,
        pve=fixed / (fixed + s2_g * trace_ratio + s2_e), collinear_ratio=null.xpx,
    )


# ----------------------------------------------------------------------------------------------------------------
# a chunk: rotation + whole-chunk fits


class _Shared(NamedTuple):
    """Everything about covariates and phenotypes that does not depend on the variant."""

    eigenvalues: jnp.ndarray  # (m,)
    cov_rot: jnp.ndarray  # (m, c)      U'C
    y_rot: jnp.ndarray  # (m, P)        U'Y
    cov: jnp.ndarray  # (n, c)
    Y: jnp.ndarray  # (n, P)
    cy_null_gram: jnp.ndarray  # (P, c+1, c+1)  [C y]'(I - UU')[C y] per phenotype
    null_log_lambda_remle: jnp.ndarray  # (P,)
    null_log_lambda_mle: jnp.ndarray  # (P,)
    null_logl_mle: jnp.ndarray  # (P,)
    trace_ratio: jnp.ndarray  # ()  tr(K)/n


@partial(jax.jit, static_argnames=("c", "exact", "max_iter", "rotation_dtype"))
def _fit_chunk(rotation_basis, shared: _Shared, genotypes, *, c, exact, max_iter, rotation_dtype):
    """genotypes: (n, B) imputed. Returns a dict of (P, B) arrays for every phenotype and variant of the chunk.

    rotation_basis is the kernel's basis in rotation_dtype: U'X runs in that precision, everything after in float64.
    """
    genotypes = genotypes.astype(shared.Y.dtype)
    x_rot = structure.rotate(rotation_basis, genotypes.astype(rotation_dtype)).astype(genotypes.dtype)  # (m, B)
    xx = jnp.sum(genotypes * genotypes, axis=0) - jnp.sum(x_rot * x_rot, axis=0)  # (B,)
    xc = shared.cov.T @ genotypes - shared.cov_rot.T @ x_rot  # (c, B)
    xy = shared.Y.T @ genotypes - shared.y_rot.T @ x_rot  # (P, B)
    fixed_scale = jnp.var(genotypes, axis=0, ddof=1)  # var(x b) = b^2 var(x)
    n = jnp.asarray(genotypes.shape[0], genotypes.dtype)
    b = x_rot.shape[1]

    def one_phenotype(xy_p, y_r, cy_gram, t_remle0, t_mle0, logl0):
        data = chunk_criteria.chunk_data(shared.eigenvalues, jnp.concatenate([shared.cov_rot, y_r[:, None]], axis=1),
                                         x_rot, cy_gram, jnp.concatenate([xc, xy_p[None]]), xx, n)
        if exact:
            remle, mle = _optimize_log_lambdas(partial(chunk_criteria.chunk_criterion, data=data),
                                               partial(_chunk_both, data=data), _chunk_grid(data), jnp.full(b, t_remle0),
                                               jnp.full(b, t_mle0), max_iter,
                                               partial(chunk_criteria.chunk_criterion_derivatives, data=data))
            t_remle, t_mle = remle.params, mle.params
            converged = remle.converged & mle.converged
            iterations = remle.iterations + mle.iterations
        else:
            t_remle, t_mle = jnp.full(b, t_remle0), jnp.full(b, t_mle0)
            converged, iterations = jnp.ones(b, bool), jnp.zeros(b, jnp.int32)
        tests = _variant_tests(data, t_remle, t_mle, t_mle0, logl0, shared.trace_ratio, fixed_scale, c=c)
        if not exact:
            tests["p_lrt"] = jnp.full(b, jnp.nan)
        return {**tests, "converged": converged, "iterations": iterations}

    return jax.vmap(one_phenotype, in_axes=(0, 1, 0, 0, 0, 0))(
        xy, shared.y_rot, shared.cy_null_gram, shared.null_log_lambda_remle, shared.null_log_lambda_mle,
        shared.null_logl_mle)


# ----------------------------------------------------------------------------------------------------------------
# front door


def _null_models(basis, cov, Y, trace_ratio, max_iter):
    """REML and ML null fits per phenotype, sharing the spectral machinery of the scan."""
    out = {k: [] for k in NullModel._fields}
    for p in range(Y.shape[1]):
        data = structure.spectral_data(basis, jnp.asarray(Y[:, p]), jnp.asarray(cov))
        lam, lam_mle, q, logl_remle, logl_mle, h = map(float, _null_fit(data, max_iter))
        s2_e = q / (Y.shape[0] - cov.shape[1])
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


def center(K: np.ndarray) -> np.ndarray:
    """Double-centre a kinship: ``P K P`` with ``P = I - 11'/n`` (GEMMA's CenterMatrix)."""
    K = K - K.mean(axis=0, keepdims=True)
    return K - K.mean(axis=1, keepdims=True)


def _column_chunks(genotypes, chunk_size, start=0, stop=None) -> Iterable[np.ndarray]:
    if hasattr(genotypes, "shape") and hasattr(genotypes, "__getitem__"):
        stop = genotypes.shape[1] if stop is None else min(stop, genotypes.shape[1])
        for first in range(start, stop, chunk_size):
            yield np.asarray(genotypes[:, first:min(first + chunk_size, stop)])
    else:
        if start or stop is not None:
            raise validate.InputError("start/stop need genotypes with column slicing, not an iterable of chunks")
        yield from (np.asarray(chunk) for chunk in genotypes)


def _impute(chunk: np.ndarray, max_missing: float, min_maf: float):
    """Mean-impute NaN per variant; return imputed (n, b) float64, n_miss, af (freq. of the counted allele), status."""
    chunk = np.asarray(chunk, dtype=float)
    missing = np.isnan(chunk)
    n_miss = missing.sum(axis=0)
    n_obs = chunk.shape[0] - n_miss
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n_obs > 0, np.nansum(chunk, axis=0) / np.maximum(n_obs, 1), np.nan)
    imputed = np.where(missing, np.where(np.isnan(means), 0.0, means)[None, :], chunk)
    af = means / 2.0
    spread = np.nanmax(np.where(missing, -np.inf, chunk), axis=0, initial=-np.inf) - np.nanmin(
        np.where(missing, np.inf, chunk), axis=0, initial=np.inf)
    status = np.full(chunk.shape[1], "ok", dtype=object)
    maf = np.minimum(af, 1.0 - af)
    if min_maf > 0:  # genotypes that are not allele counts (e.g. standardized) are scanned with min_maf=0
        status[maf < min_maf] = "low_maf"
    status[n_miss / chunk.shape[0] > max_missing] = "too_many_missing"
    status[~(spread > 0)] = "monomorphic"
    status[n_obs == 0] = "all_missing"
    return imputed, n_miss, af, status


class PreparedScan(NamedTuple):
    """Everything a scan needs before its first variant: the decomposed kernel, rotated covariates and phenotypes,
    the null models, and the compiled per-chunk fit. Built once by :func:`prepare_scan`; chunks of variants are then
    fitted by :func:`scan_chunks` (in any order, e.g. one share of a partitioned run).

    null: the per-phenotype null models; n: samples; covariates: c including the intercept; phenotypes: P;
    chunk_size: variants per fitted batch (rounded up to a multiple of the device count).
    """

    null: NullModel
    n: int
    covariates: int
    phenotypes: int
    chunk_size: int
    min_maf: float
    max_missing: float
    fit_chunk: object  # (n, chunk_size) imputed genotypes on the device -> dict of (P, chunk_size) arrays
    chunk_sharding: object
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
    chunk_size: int = 512,
    min_maf: float = 0.01,
    max_missing: float = 0.05,
    max_iter: int = 30,
    center_kinship: bool = True,
    rotation_dtype=jnp.float64,
    covariate_names=None,
    eigen_cache: str | None = None,
    min_hwe_p: float = 0.0,
) -> PreparedScan:
    """Validate the model without variants, decompose its kernel and fit the null models (arguments as in
    :func:`scan`; covariate_names (c0,) name the covariate columns in messages; eigen_cache: a file prefix where
    the kinship's eigendecomposition is read from or written to, see :mod:`jaxlmm.io.eigen_cache`; min_hwe_p:
    variants whose Hardy-Weinberg exact p-value (:func:`jaxlmm.hwe.hwe_exact_pvalues`) is below it get status
    "hwe")."""
    if mode not in ("exact", "null"):
        raise validate.InputError(f"mode must be 'exact' or 'null', got {mode!r}")
    if int(chunk_size) < 1:
        raise validate.InputError(f"chunk_size must be a positive number of variants, got {chunk_size!r}")
    Y = np.asarray(y, dtype=float)
    Y = Y[:, None] if Y.ndim == 1 else Y
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
    if kinship is not None:
        K = validate.kinship(kinship, n, check_psd=False)  # tested on the eigenvalues of its decomposition
        term = structure.kinship_term(center(K) if center_kinship else K)
    else:
        term = structure.group_term(validate.groups(groups, n, "groups"))
    with jax.enable_x64(True):
        if eigen_cache is not None:
            from .io.eigen_cache import cached_spectral_basis

            basis = cached_spectral_basis(term, eigen_cache)
        else:
            basis = structure.spectral_basis(term)
        prepared = _prepare_validated(Y, cov, term, basis, mode, int(chunk_size), min_maf, max_missing, max_iter,
                                      rotation_dtype)
    return prepared._replace(min_hwe_p=float(min_hwe_p))


def scan(y, genotypes, covariates=None, *, variant_names=None, **options) -> ScanResult:
    """Fit ``y ~ covariates + variant_j + random effect`` for every variant j and test it (GEMMA ``-lmm 4`` tests).

    y:           (n,) or (n, P) phenotypes (finite; several phenotypes share one decomposition)
    genotypes:   (n, M) array-like (numpy, memmap, any object with ``.shape`` and column slicing; NaN = missing,
                 mean-imputed per variant) or an iterable of (n, b) chunks
    covariates:  (n, c0) or None; an intercept is prepended unless ``intercept=False``
    variant_names: (M,) labels for the "variant" column (default v1, v2, ...)
    options (keyword only):
      kinship:     (n, n) relationship matrix, or groups: (n,) labels of a grouping factor ``(1|g)``
      intercept:   prepend an intercept column (default True)
      mode:        "exact" (per-variant REML/ML, default) or "null" (lambda fixed at the null REML estimate)
      chunk_size:  variants per batch (default 512)
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


def _device_placement(chunk_size: int):
    """Shard chunks over the variant axis when JAX sees several devices; returns (chunk sharding, replicated
    sharding, chunk size rounded up to a multiple of the device count). Single device: (None, None, chunk_size)."""
    devices = jax.local_devices()  # in a multi-process run each process scans its own share on its own devices
    if len(devices) == 1:
        return None, None, chunk_size
    mesh = jax.sharding.Mesh(np.asarray(devices), ("variants",))
    spec = jax.sharding.PartitionSpec
    chunk_size = -(-chunk_size // len(devices)) * len(devices)
    return (jax.sharding.NamedSharding(mesh, spec(None, "variants")), jax.sharding.NamedSharding(mesh, spec()),
            chunk_size)


def _prepare_validated(Y, cov, term, basis, mode, chunk_size, min_maf, max_missing, max_iter, rotation_dtype):
    n, c = cov.shape
    trace_ratio = structure.mean_kernel_diagonal(term)
    null = _null_models(basis, cov, Y, trace_ratio, max_iter)
    cy = np.concatenate([np.broadcast_to(cov, (Y.shape[1], n, c)), Y.T[:, :, None]], axis=2)  # (P, n, c+1)
    cy_rot = np.stack([np.asarray(structure.rotate(basis, jnp.asarray(a))) for a in cy])
    cy_gram = np.einsum("pni,pnj->pij", cy, cy) - np.einsum("pmi,pmj->pij", cy_rot, cy_rot)
    shared = _Shared(
        eigenvalues=structure.eigenvalues(basis), cov_rot=jnp.asarray(cy_rot[0, :, :c]),
        y_rot=jnp.asarray(cy_rot[:, :, c].T), cov=jnp.asarray(cov), Y=jnp.asarray(Y), cy_null_gram=jnp.asarray(cy_gram),
        null_log_lambda_remle=jnp.log(jnp.asarray(null.lambda_remle)),
        null_log_lambda_mle=jnp.log(jnp.asarray(null.lambda_mle)),
        null_logl_mle=jnp.asarray(null.logl_mle), trace_ratio=jnp.asarray(trace_ratio),
    )
    chunk_sharding, replicated, chunk_size = _device_placement(chunk_size)
    if replicated is not None:
        basis, shared = jax.device_put((basis, shared), replicated)
    rotation_basis = jax.tree.map(
        lambda a: a.astype(rotation_dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, basis)
    fit = partial(_fit_chunk, rotation_basis, shared, c=c, exact=mode == "exact", max_iter=max_iter,
                  rotation_dtype=jnp.dtype(rotation_dtype))
    return PreparedScan(null, n, c, Y.shape[1], chunk_size, min_maf, max_missing, fit, chunk_sharding)


def scan_chunks(prepared: PreparedScan, genotypes, start: int = 0, stop: int | None = None) -> Iterator[ScanChunk]:
    """Fit and test variants start .. stop - 1 of genotypes, one :class:`ScanChunk` per chunk of
    ``prepared.chunk_size`` variants, in order. The next chunk is read and dispatched while the previous one is
    fitted. Results of a variant do not depend on start/stop when start is a multiple of the chunk size.

    genotypes: (n, M) array-like with column slicing (start/stop apply), or an iterable of (n, b) chunks.
    """
    n, size = prepared.n, prepared.chunk_size
    pending, offset = None, start
    for chunk in _column_chunks(genotypes, size, start, stop):
        if chunk.ndim != 2 or chunk.shape[0] != n:
            raise validate.InputError(f"genotype chunk at variant {offset + 1} has shape {chunk.shape}, expected ({n}, b)")
        b = chunk.shape[1]
        imputed, n_miss, af, status = _impute(chunk, prepared.max_missing, prepared.min_maf)
        if prepared.min_hwe_p > 0:
            from .hwe import hwe_exact_pvalues

            status[(status == "ok") & (hwe_exact_pvalues(chunk) < prepared.min_hwe_p)] = "hwe"
        filler = (np.arange(n) % 2)[:, None]  # a well-posed column fitted in place of variants not analyzed
        padded = np.empty((n, size))
        padded[:, :b] = np.where(status == "ok", imputed, filler)  # filtered variants would stall the batch
        padded[:, b:] = filler
        with jax.enable_x64(True):
            device_chunk = (jax.device_put(padded, prepared.chunk_sharding) if prepared.chunk_sharding is not None
                            else jnp.asarray(padded))
            dispatched = prepared.fit_chunk(device_chunk)  # asynchronous: runs while the next chunk is read
        if pending is not None:
            yield _collect(prepared.phenotypes, *pending)
        pending = (offset, b, n_miss, af, status, dispatched)
        offset += b
    if pending is not None:
        yield _collect(prepared.phenotypes, *pending)


def _collect(P, offset, b, n_miss, af, status, dispatched) -> ScanChunk:
    """Bring one chunk's statistics to the host and give each variant its final status."""
    out = {k: np.asarray(v)[:, :b] for k, v in dispatched.items()}
    collinear = out["collinear_ratio"] <= 1e-8 * np.maximum(1.0, out["collinear_ratio"].max(initial=1.0))
    st = np.broadcast_to(status, (P, b)).copy()
    st[(st == "ok") & collinear] = "collinear"
    st[(st == "ok") & ~out["converged"].astype(bool)] = "not_converged"
    filtered = (st != "ok") & (st != "not_converged")
    columns = {"n_miss": np.broadcast_to(n_miss, (P, b)).copy(), "af": np.broadcast_to(af, (P, b)).copy()}
    for key in COLUMNS[4:-1]:
        values = out[key]
        if key == "converged":
            columns[key] = values.astype(bool)
        elif key == "iterations":
            columns[key] = values.astype(int)
        else:
            columns[key] = np.where(filtered, np.nan, values)
    columns["status"] = st.astype(str)
    return ScanChunk(offset, columns)
