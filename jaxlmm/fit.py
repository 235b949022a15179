"""Fitting one linear mixed model: the front door for arrays.

``fit(y, X, groups=... | kinship=... | Z=..., G=... | terms=[...])`` validates the input, chooses the spectral path
(one variance component: the data are rotated once into the kernel's eigenbasis) or the dense Cholesky path
(several components), minimizes the profiled REML criterion or ML deviance over log variance ratios with optax
(:func:`jaxlmm.optimize.minimize`), decides boundary fits, and extracts BLUE, BLUP and PVE
(:mod:`jaxlmm.estimates`).

Boundary fits: a log ratio never reaches 0, so a component whose ratio ends small is tested at exactly 0. When the
criterion at 0 is no worse than at the optimizer's point, or its slope in the ratio at 0 is non-negative, the
component is pinned at 0, the others are refitted, and the fit is flagged ``singular`` (lme4's ``isSingular``).

Identification: REML has n - p error contrasts; when these cannot separate the variance parameters (e.g. the seed's
full model, n - p = 1) the criterion is flat along a ridge. Flatness is detected from the Hessian in log ratios and
reported in ``FitResult.identified`` and ``FitResult.messages``.

Computation runs in float64 inside ``jax.enable_x64(True)``; the global JAX setting is left as it was.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import structure, validate
from .estimates import fixed_effect_variance, fixed_effects, random_effects, variance_explained
from .likelihood import (DenseData, dense_stats, gls, profiled_criterion_from_stats, residual_df,
                         spectral_profiled_criterion_at_ratio, spectral_stats)
from .optimize import DEFAULT_MAX_ITER, minimize, ratios_from_params
from .structure import RandomTerm

BOUNDARY_CANDIDATE_RATIO = 1e-3  # components whose ratio ends below this are tested at exactly 0
FLAT_CURVATURE = 1e-8  # Hessian eigenvalue (criterion per log-ratio^2) below which a direction is flat
START_RATIO_RANGE = (1e-2, 1e2)
RESIDUAL_BOUNDARY_RATIO = 1e6  # a ratio s2_k / s2_e beyond this means the residual variance went to its boundary


class FitResult(NamedTuple):
    """A fitted linear mixed model (host numpy values; see :mod:`jaxlmm.estimates` for the formulas).

    method:            "REML" or "ML"
    fixef_names:       (p,) names of the fixed effects, the intercept called "(Intercept)"
    fixef, se, tvalue: (p,) BLUE, standard errors sqrt(diag(s2_e (X'H^-1X)^-1)), t statistics
    fixef_cov:         (p, p) covariance of the BLUE
    term_names:        (k,) names of the variance components
    variances:         (k,) s2_k of each component (0 exactly at a boundary)
    residual_variance: s2_e
    singular:          (k,) bool, component at the boundary (variance 0)
    ranef:             (k,) arrays of BLUPs, one per term, ordered as ranef_levels
    ranef_levels:      (k,) tuples of level labels
    ranef_condvar:     (k,) arrays, lme4's conditional variances (fixed effects treated as known)
    ranef_pev:         (k,) arrays, full prediction-error variances (fixed effects estimated)
    criterion:         REML criterion (-2 log restricted likelihood) for REML fits, deviance (-2 log L) for ML
    loglik:            -criterion / 2 (restricted log-likelihood for REML, as lme4's logLik)
    variance_parts:    name -> variance on the phenotype scale: "fixed" (var(Xb), n-1 denominator), each term
                       (s2_k tr(K_k)/n), "residual"
    pve:               name -> share of the total of variance_parts
    heritability:      sum of random parts / (random + residual)
    n, p:              observations and fixed effects
    converged:         optimizer convergence (gradient and objective tests)
    iterations:        optimizer iterations, summed over boundary refits
    gradient:          (k,) final gradient of the profiled criterion in log ratios (free components)
    start_criterion:   criterion at the starting values
    identified:        False when the criterion is flat in some variance direction
    messages:          human-readable diagnostics (singular fit, non-identified split, ...)
    """

    method: str
    fixef_names: tuple
    fixef: np.ndarray
    se: np.ndarray
    tvalue: np.ndarray
    fixef_cov: np.ndarray
    term_names: tuple
    variances: np.ndarray
    residual_variance: float
    singular: np.ndarray
    ranef: tuple
    ranef_levels: tuple
    ranef_condvar: tuple
    ranef_pev: tuple
    criterion: float
    loglik: float
    variance_parts: dict
    pve: dict
    heritability: float
    n: int
    p: int
    converged: bool
    iterations: int
    gradient: np.ndarray
    start_criterion: float
    identified: bool
    messages: tuple


# ----------------------------------------------------------------------------------------------------------------
# objectives (module level so jit caches them across fits)


def _spectral_reml(ratios, data):
    return spectral_profiled_criterion_at_ratio(ratios, data, "REML")


def _spectral_ml(ratios, data):
    return spectral_profiled_criterion_at_ratio(ratios, data, "ML")


def _dense_reml(ratios, data):
    return profiled_criterion_from_stats(dense_stats(ratios, data), data.y.shape[0], "REML")


def _dense_ml(ratios, data):
    return profiled_criterion_from_stats(dense_stats(ratios, data), data.y.shape[0], "ML")


_OBJECTIVES = {
    ("spectral", "REML"): _spectral_reml,
    ("spectral", "ML"): _spectral_ml,
    ("dense", "REML"): _dense_reml,
    ("dense", "ML"): _dense_ml,
}
_VALUES = {key: jax.jit(f) for key, f in _OBJECTIVES.items()}
_SLOPES = {key: jax.jit(jax.grad(f)) for key, f in _OBJECTIVES.items()}


@partial(jax.jit, static_argnames="key")
def _log_ratio_hessian(log_ratios, free, data, key):
    """Hessian (k, k) of the profiled criterion in log ratios; pinned components held at ratio 0."""
    return jax.hessian(lambda t: _OBJECTIVES[key](ratios_from_params(t, free), data))(log_ratios)


# ----------------------------------------------------------------------------------------------------------------
# front door


def fit(
    y,
    X=None,
    *,
    groups=None,
    kinship=None,
    Z=None,
    G=None,
    terms: Sequence[RandomTerm] = (),
    method: str = "REML",
    fixef_names: Sequence[str] | None = None,
    intercept: bool = True,
    variance_ratios=None,
    max_iter: int = DEFAULT_MAX_ITER,
) -> FitResult:
    """Fit ``y = X b + sum_k Z_k u_k + e`` by REML (default) or ML.

    y:        (n,) response
    X:        (n, p) fixed-effect covariates, or None; an intercept column is prepended unless ``intercept=False``
    groups:   (n,) labels of a grouping factor, lme4's ``(1|g)``
    kinship:  (n, n) relationship matrix K (``u ~ N(0, s2 K)``, one effect per observation)
    Z, G:     (n, q), (q, q) the general random effect ``Z u``, ``u ~ N(0, s2 G)``
    terms:    further :class:`RandomTerm` s (see :mod:`jaxlmm.structure`); all given components are fitted together
    variance_ratios: (k,) optional; hold ``s2_k / s2_e`` at these values (no optimization; ``s2_e`` still profiled)
    """
    if method not in ("REML", "ML"):
        raise validate.InputError(f"method must be 'REML' or 'ML', got {method!r}")
    y = validate.response(y)
    n = y.shape[0]
    X, names = _design_with_names(X, n, fixef_names, intercept)
    terms = list(terms)
    if groups is not None:
        terms.insert(0, structure.group_term(validate.groups(groups, n, "group"), name="group"))
    if kinship is not None:
        terms.append(structure.kinship_term(validate.kinship(kinship, n), name="kinship"))
    if Z is not None or G is not None:
        if Z is None or G is None:
            raise validate.InputError("the general random effect needs both Z and G")
        Zv, Gv = validate.relationship(Z, G, n, "u")
        terms.append(structure.general_term(Zv, Gv, name="u"))
    if not terms:
        raise validate.InputError("no random effect given: pass groups=, kinship=, Z= and G=, or terms=")
    for term in terms:
        if term.Z.shape[0] != n:
            raise validate.InputError(f"random term {term.name!r} has {term.Z.shape[0]} rows but y has {n}")
    validate.enough_observations(n, X.shape[1], len(terms), method)
    with jax.enable_x64(True):
        return _fit_validated(y, X, names, terms, method, variance_ratios, max_iter)


def fit_terms(y, X, fixef_names, terms, method="REML", variance_ratios=None, max_iter=DEFAULT_MAX_ITER) -> FitResult:
    """:func:`fit` for a design that already has its intercept column and names (used by the formula front)."""
    return fit(y, X, terms=terms, method=method, fixef_names=fixef_names, intercept=False,
               variance_ratios=variance_ratios, max_iter=max_iter)


def _design_with_names(X, n, fixef_names, intercept):
    if X is None:
        X = np.zeros((n, 0))
    X = np.asarray(X, dtype=float) if not isinstance(X, np.ndarray) else X
    if X.ndim == 1:
        X = X[:, None]
    names = list(fixef_names) if fixef_names is not None else [f"x{j + 1}" for j in range(X.shape[1])]
    if intercept:
        X = np.concatenate([np.ones((X.shape[0], 1)), X], axis=1)
        names = ["(Intercept)", *names]
    if X.shape[1] == 0:
        raise validate.InputError("the model has no fixed effects: keep the intercept or pass X")
    return validate.design(X, n, names), tuple(names)


# ----------------------------------------------------------------------------------------------------------------
# numerics


class _Problem(NamedTuple):
    path: str  # "spectral" or "dense"
    data: object  # SpectralData or DenseData
    basis: object  # spectral basis or None
    kernels: object  # (k, n, n) or None


def _setup(y, X, terms) -> _Problem:
    yj, Xj = jnp.asarray(y), jnp.asarray(X)
    if len(terms) == 1:
        basis = structure.spectral_basis(terms[0])
        return _Problem("spectral", structure.spectral_data(basis, yj, Xj), basis, None)
    kernels = jnp.asarray(np.stack([structure.kernel(t) for t in terms]))
    return _Problem("dense", DenseData(yj, Xj, kernels), None, kernels)


def _stats(problem: _Problem, ratios):
    if problem.path == "spectral":
        return spectral_stats(ratios[0], problem.data)
    return dense_stats(ratios, problem.data)


def _hinv(problem: _Problem, ratios):
    if problem.path == "spectral":
        return lambda A: structure.spectral_h_inverse(problem.basis, ratios[0], A)
    return lambda A: structure.dense_h_inverse(ratios, problem.kernels, A)


def moment_start(problem: _Problem, y, X, k: int) -> np.ndarray:
    """Starting ratios by Haseman-Elston moments: regress OLS residual cross-products e e' on the kernels and I.

    Solves ``sum_b tr(K_a K_b) s_b = e' K_a e`` (K_{k+1} = I) and clips ``s_k / s_e`` into START_RATIO_RANGE.
    """
    resid = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    if problem.path == "spectral":
        s = np.asarray(structure.eigenvalues(problem.basis))
        rotated = np.asarray(structure.rotate(problem.basis, jnp.asarray(resid[:, None])))[:, 0]
        lhs = np.array([[np.sum(s * s), np.sum(s)], [np.sum(s), resid.size]])
        rhs = np.array([np.sum(s * rotated**2), resid @ resid])
    else:
        kernels = list(np.asarray(problem.kernels)) + [np.eye(resid.size)]
        lhs = np.array([[np.sum(a * b) for b in kernels] for a in kernels])
        rhs = np.array([resid @ a @ resid for a in kernels])
    sol = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    s_e = sol[-1] if sol[-1] > 0 else resid @ resid / resid.size
    ratios = np.where(sol[:k] > 0, sol[:k] / s_e, START_RATIO_RANGE[0])
    return np.clip(ratios, *START_RATIO_RANGE)


def _optimize(problem: _Problem, start: np.ndarray, method: str, max_iter: int):
    """Active-set loop: L-BFGS over free log ratios, then test small components at exactly 0 (and pinned ones
    for a negative slope at 0). Returns (ratios, free, result, total iterations)."""
    key = (problem.path, method)
    objective, value_at, slope_at = _OBJECTIVES[key], _VALUES[key], _SLOPES[key]
    k = start.shape[0]
    free = np.ones(k, dtype=bool)
    params = jnp.log(jnp.asarray(start))
    iterations = 0
    result = None
    for _ in range(2 * k + 1):
        result = minimize(objective, params, jnp.asarray(free), (problem.data,), max_iter=max_iter)
        iterations += int(result.iterations)
        params = result.params
        ratios = ratios_from_params(params, jnp.asarray(free))
        value = float(result.value)
        changed = False
        for j in range(k):
            at_zero = ratios.at[j].set(0.0)
            slope = float(slope_at(at_zero, problem.data)[j])
            if free[j] and float(ratios[j]) < BOUNDARY_CANDIDATE_RATIO:
                no_worse = float(value_at(at_zero, problem.data)) <= value + 1e-10 * (1.0 + abs(value))
                if no_worse or slope >= 0.0:
                    free[j], changed = False, True
            elif not free[j] and slope < -1e-8 * (1.0 + abs(value)):
                free[j], changed = True, True
                params = params.at[j].set(np.log(BOUNDARY_CANDIDATE_RATIO))
        if not changed:
            break
    ratios = ratios_from_params(params, jnp.asarray(free))
    return np.asarray(ratios), free, result, iterations


def _flat_directions(problem: _Problem, ratios: np.ndarray, free: np.ndarray, method: str) -> bool:
    """True when the profiled criterion has (numerically) zero curvature in some free log-ratio direction."""
    if not free.any():
        return False
    idx = np.flatnonzero(free)
    log_ratios = jnp.log(jnp.asarray(np.where(free, ratios, 1.0)))
    hessian = np.asarray(_log_ratio_hessian(log_ratios, jnp.asarray(free), problem.data, (problem.path, method)))
    hessian = hessian[np.ix_(idx, idx)]
    return bool(np.linalg.eigvalsh(0.5 * (hessian + hessian.T))[0] < FLAT_CURVATURE)


def _fit_validated(y, X, names, terms, method, variance_ratios, max_iter) -> FitResult:
    n, p, k = X.shape[0], X.shape[1], len(terms)
    term_names = tuple(t.name for t in terms)
    problem = _setup(y, X, terms)
    start = moment_start(problem, y, X, k)
    messages = []
    if variance_ratios is not None:
        ratios = np.asarray(variance_ratios, dtype=float).reshape(-1)
        if ratios.shape != (k,) or (ratios < 0).any() or not np.isfinite(ratios).all():
            raise validate.InputError(f"variance_ratios must be {k} finite non-negative values, got {variance_ratios!r}")
        free = ratios > 0
        converged, iterations, gradient = True, 0, np.zeros(k)
        start_criterion = float(_VALUES[(problem.path, method)](jnp.asarray(start), problem.data))
        messages.append("variance ratios held fixed at the given values (not estimated)")
    else:
        ratios, free, result, iterations = _optimize(problem, start, method, max_iter)
        converged = bool(result.converged)
        gradient = np.where(free, np.asarray(result.gradient), 0.0)
        start_criterion = float(result.start)
        if not converged:
            messages.append(
                f"optimizer did not converge in {max_iter} iterations (max |gradient| {np.abs(gradient).max():.3g})"
            )
    ratios_j = jnp.asarray(ratios)
    stats = _stats(problem, ratios_j)
    sol = gls(stats)
    s2_e = float(sol.q / residual_df(n, p, method))
    criterion = float(profiled_criterion_from_stats(stats, n, method))

    hinv = _hinv(problem, ratios_j)
    fixed = fixed_effects(jnp.asarray(y), jnp.asarray(X), hinv, s2_e)
    ranef = [random_effects(t.Z, t.G, ratios[j], s2_e, fixed, hinv) for j, t in enumerate(terms)]

    variances = ratios * s2_e
    singular = ~free if variance_ratios is None else ratios == 0
    for name, is_singular in zip(term_names, singular):
        if is_singular:
            messages.append(f"boundary (singular) fit: the variance of {name!r} is 0")
    if variance_ratios is None and np.any(ratios > RESIDUAL_BOUNDARY_RATIO):
        messages.append("boundary fit: the residual variance is (nearly) 0 relative to the random effects")
    identified = True
    if variance_ratios is None:
        too_few = (n - p if method == "REML" else n) < k + 1
        identified = not (too_few or _flat_directions(problem, ratios, free, method))
        if not identified:
            flat = ", ".join(repr(t) for t, f in zip(term_names, free) if f) or "the components"
            messages.append(
                f"not identified: the {method} criterion is flat in the variance ratio of {flat} "
                f"({n - p} residual degree(s) of freedom for {k + 1} variance parameters); the split between "
                f"{flat} and residual variance is one point on a ridge of equal criterion"
            )

    beta = np.asarray(fixed.beta)
    random_parts = {t.name: float(variances[j]) * structure.mean_kernel_diagonal(t) for j, t in enumerate(terms)}
    parts = {"fixed": fixed_effect_variance(X, beta), **random_parts, "residual": s2_e}
    random_total = sum(random_parts.values())
    return FitResult(
        method=method,
        fixef_names=names,
        fixef=beta,
        se=np.asarray(fixed.se),
        tvalue=np.asarray(fixed.t),
        fixef_cov=np.asarray(fixed.cov),
        term_names=term_names,
        variances=variances,
        residual_variance=s2_e,
        singular=np.asarray(singular),
        ranef=tuple(np.asarray(r.blup) for r in ranef),
        ranef_levels=tuple(t.levels for t in terms),
        ranef_condvar=tuple(np.asarray(r.condvar) for r in ranef),
        ranef_pev=tuple(np.asarray(r.pev) for r in ranef),
        criterion=criterion,
        loglik=-criterion / 2.0,
        variance_parts=parts,
        pve=variance_explained(parts["fixed"], random_parts, s2_e),
        heritability=random_total / (random_total + s2_e),
        n=n,
        p=p,
        converged=converged,
        iterations=iterations,
        gradient=gradient,
        start_criterion=start_criterion,
        identified=identified,
        messages=tuple(messages),
    )
