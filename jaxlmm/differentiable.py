"""Differentiable fits: the fitted model as a pure JAX function of its inputs, with exact derivatives.

:func:`differentiable_fit` (dense, any number of kernels, observation weights) and
:func:`differentiable_fit_spectral` (one kernel given by a fixed eigenbasis) return a :class:`DifferentiableFit` whose
every array (fixed effects, their standard errors, variance components, heritability, BLUPs, the criterion at the
optimum) can be differentiated with ``jax.grad``, ``jax.jacobian``, ``jax.jvp`` with respect to the inputs, under
``jit`` and ``vmap``.

Model (dense path): ``V = sum_k s2_k K_k + s2_e diag(1/w)``, so with ratios ``r_k = s2_k / s2_e``

    V = s2_e H,    H = diag(1/w) + sum_k r_k K_k.

Observation weights are folded into the data once: with ``D = diag(sqrt(w))``, ``H = D^-1 (I + sum_k r_k D K_k D)
D^-1``, so the weighted problem is the unweighted one of :mod:`jaxlmm.likelihood` for ``D y, D X, D K_k D`` with
``log|H| = log|I + sum_k r_k D K_k D| - sum_i log w_i``. Everything stays differentiable in ``w``.

Implicit differentiation. Let ``t`` (k,) be the log ratios and ``F(t, z)`` the profiled criterion (REML criterion or
ML deviance, ``b`` and ``s2_e`` solved in closed form) for the inputs ``z = (y, X, K, w)``. The optimizer (optax
L-BFGS, :func:`jaxlmm.optimize.minimize`, plus an in-graph active set for boundaries) finds ``t*(z)`` with

    g(t*, z) = dF/dt (t*, z) = 0.

Where the Hessian ``A = dg/dt = d2F/dt2`` is non-singular the implicit function theorem makes ``t*`` differentiable:
differentiating ``g(t*(z), z) = 0`` gives ``A dt* + (dg/dz) dz = 0``, so

    jvp:  dt* = -A^-1 (dg/dz) dz                      (one k x k solve, one jvp of g in z)
    vjp:  z_bar = -(dg/dz)' A^-T t_bar                (one k x k solve, one vjp of g in z)

This is ``jax.lax.custom_root`` on ``g``: its solve (never differentiated) is the optimizer followed by Newton polish
steps ``t <- t - A^-1 g``, its tangent solve materializes the k x k matrix ``A`` and solves. The outputs are then
ordinary differentiable functions of ``(t*, z)`` (GLS, BLUE, BLUP, ``s2_e = q / df``), so the chain rule through
``t*`` completes the derivative; the criterion at the optimum gets ``dF/dz`` (the envelope theorem: ``g = 0``). The
optimizer's iterations are never differentiated, and a gradient costs the fit plus a few criterion evaluations (the
Hessian, one second-order vjp, the outputs' vjp).

Boundaries. A component whose ratio is best at 0 is pinned there exactly (same rule as :func:`jaxlmm.fit`: a small
ratio is tested at 0, and kept when the criterion is no worse or its slope at 0 is non-negative; a pinned component
whose slope at 0 turns negative is released). For a pinned component the root function is ``t_j - t_j(search)``
instead of ``g_j``, so its derivative is 0: derivatives are those of the *constrained* solution, the component held
at 0 while the others move. That is the one-sided derivative in the directions that keep the component at the
boundary; it is finite, never NaN, and ``DifferentiableFit.boundary`` says where it applies. A flat criterion
(``identified`` False: a singular Hessian, e.g. too few residual degrees of freedom) has no unique optimum and no
derivative; its derivatives are then not meaningful.

Which path: :func:`differentiable_fit` factors ``H`` (Cholesky, O(n^3) per criterion evaluation) and is
differentiable in everything, kernels and weights included (learn kernel weights, ``K = sum_k softmax(a)_k K_k``).
:func:`differentiable_fit_spectral` takes one kernel's eigenbasis (a grouping factor's closed form or ``eigh`` of a
kinship, :func:`jaxlmm.structure.spectral_basis`), fixed and not differentiated, and rotates ``[X y]`` once: O(n^2)
per fit, O(n) per evaluation, differentiable in ``y`` and ``X`` (influence of each observation, per-variant gradients
in a scan chunk).

Precision: the functions compute in the dtype of their inputs. Enable float64 (``with jax.enable_x64(True):``) for
derivatives that match finite differences of refits; jaxlmm never changes the global setting.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from . import structure
from .fit import BOUNDARY_CANDIDATE_RATIO, FLAT_CURVATURE
from .likelihood import METHODS, DenseData, dense_stats, gls, profiled_criterion_from_stats, spectral_stats
from .optimize import DEFAULT_FTOL, DEFAULT_MAX_ITER, minimize, ratios_from_params

DEFAULT_GTOL = 1e-9  # max |dF/dt| at which L-BFGS stops; Newton polish steps then take t* to rounding level
POLISH_STEPS = 2
POLISH_STEP = 1e-4  # log-ratio step of the difference Jacobian used by the polish
START_LOG_RATIOS = np.log([1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3])  # common start grid for all components


class DifferentiableFit(NamedTuple):
    """A fit as JAX arrays; every floating field is differentiable in the inputs.

    beta:              (p,)    BLUE (X'H^-1X)^-1 X'H^-1y
    se:                (p,)    sqrt(diag(s2_e (X'H^-1X)^-1))
    variances:         (k,)    s2_k = r_k s2_e (exactly 0 at a boundary)
    residual_variance: ()      s2_e = q / (n - p) (REML) or q / n (ML)
    heritability:      ()      sum_k s2_k tr(K_k)/n / (sum_k s2_k tr(K_k)/n + s2_e), as :func:`jaxlmm.fit` (with
                               weights, s2_e is the residual variance of an observation of weight 1)
    random_effects:    (k, n)  BLUP of each term's contribution Z_k u_k = r_k K_k H^-1 (y - Xb) per observation
                               (for a kinship term, Z = I, these are its BLUPs; for a grouping factor each member of
                               a group carries its group's BLUP)
    criterion:         ()      REML criterion (-2 log restricted likelihood) or ML deviance at the optimum
    log_ratios:        (k,)    t* = log(s2_k / s2_e); meaningless (and with zero derivative) where ``boundary``
    boundary:          (k,)    bool, component pinned at variance 0: derivatives are those of the constrained solution
    converged:         ()      bool, optimizer converged
    identified:        ()      bool, the Hessian in the free log ratios is positive definite (a unique optimum)
    iterations:        ()      L-BFGS iterations, summed over active-set rounds
    """

    beta: jnp.ndarray
    se: jnp.ndarray
    variances: jnp.ndarray
    residual_variance: jnp.ndarray
    heritability: jnp.ndarray
    random_effects: jnp.ndarray
    criterion: jnp.ndarray
    log_ratios: jnp.ndarray
    boundary: jnp.ndarray
    converged: jnp.ndarray
    identified: jnp.ndarray
    iterations: jnp.ndarray


class _Search(NamedTuple):
    params: jnp.ndarray  # (k,) log ratios
    free: jnp.ndarray  # (k,) bool
    iterations: jnp.ndarray
    converged: jnp.ndarray
    rounds: jnp.ndarray
    changed: jnp.ndarray


# ----------------------------------------------------------------------------------------------------------------
# objectives: the method is a traced flag, so REML and ML fits share one compiled program


def _profiled(stats, n, reml):
    """Profiled REML criterion (reml True) or ML deviance from the weighted statistics."""
    reml_value = profiled_criterion_from_stats(stats, n, "REML")
    return jnp.where(reml, reml_value, profiled_criterion_from_stats(stats, n, "ML"))


def _dense_objective(ratios, data: DenseData, reml):
    return _profiled(dense_stats(ratios, data), data.y.shape[0], reml)


def _spectral_objective(ratios, data, reml):
    return _profiled(spectral_stats(ratios[0], data), data.n, reml)


def _reml_flag(method: str):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return jnp.asarray(method == "REML")


# ----------------------------------------------------------------------------------------------------------------
# search (no derivatives): start grid, L-BFGS, active set for boundaries


def _start(objective, args, k: int) -> jnp.ndarray:
    """(k,) starting log ratios: the best common ratio of START_LOG_RATIOS for all components.

    Not :func:`jaxlmm.fit`'s moment start (host numpy): where the criterion has several local optima the two fits
    may end in different ones."""
    grid = jnp.asarray(START_LOG_RATIOS, dtype=jax.tree.leaves(args[0])[0].dtype)  # args[0]: the data
    values = jax.vmap(lambda t: objective(jnp.full((k,), jnp.exp(t)), *args))(grid)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    return jnp.full((k,), grid[jnp.argmin(values)])


def _boundary_moves(objective, args, params, free, value):
    """Components to pin at 0 and to release, by the rule of :func:`jaxlmm.fit` (module docstring). (k,) bools."""
    k = params.shape[0]
    ratios = ratios_from_params(params, free)
    at_zero = jnp.where(jnp.eye(k, dtype=bool), 0.0, ratios)  # row j: component j at 0, the others as they are
    values0, slopes0 = jax.vmap(jax.value_and_grad(lambda r: objective(r, *args)))(at_zero)
    slopes0 = jnp.diagonal(slopes0)
    scale = 1.0 + jnp.abs(value)
    pin = free & (ratios < BOUNDARY_CANDIDATE_RATIO) & ((values0 <= value + 1e-10 * scale) | (slopes0 >= 0.0))
    release = ~free & (slopes0 < -1e-8 * scale)
    return pin, release


def _search(objective, args, params0, max_iter: int, gtol, ftol) -> _Search:
    """Active-set loop in the graph: L-BFGS over the free log ratios, then pin/release boundary components; repeat
    while the free set changes (at most 2k + 1 rounds)."""
    k = params0.shape[0]

    def round_(state: _Search) -> _Search:
        result = minimize(objective, state.params, state.free, args, max_iter=max_iter, gtol=gtol, ftol=ftol)
        pin, release = _boundary_moves(objective, args, result.params, state.free, result.value)
        free = (state.free & ~pin) | release
        params = jnp.where(release, jnp.log(BOUNDARY_CANDIDATE_RATIO), result.params)
        return _Search(params, free, state.iterations + result.iterations, result.converged, state.rounds + 1,
                       jnp.any(pin | release))

    initial = _Search(params0, jnp.ones(k, bool), jnp.asarray(0), jnp.asarray(False), jnp.asarray(0),
                      jnp.asarray(True))
    return jax.lax.while_loop(lambda s: s.changed & (s.rounds < 2 * k + 1), round_, initial)


# ----------------------------------------------------------------------------------------------------------------
# the implicit step


def _residual_and_jacobian(root_fn, t):
    """``root_fn(t)`` and its (k, k) central-difference Jacobian (steps POLISH_STEP in log ratio), from 2k + 1
    evaluations in one vmap: cheap to compile, accurate to ~1e-8 relative, enough for Newton polish and the curvature
    test. The derivatives themselves use the exact linearization (:func:`_tangent_solve`)."""
    k = t.shape[0]
    eye = jnp.eye(k, dtype=t.dtype)
    values = jax.vmap(root_fn)(t + POLISH_STEP * jnp.concatenate([jnp.zeros((1, k), t.dtype), eye, -eye]))
    return values[0], (values[1:k + 1] - values[k + 1:]).T / (2.0 * POLISH_STEP)


def _newton_polish(root_fn, t0):
    """Newton steps ``t <- t - J^-1 root_fn(t)`` (POLISH_STEPS of them), a step kept only when it lowers
    max|root_fn| (a singular or indefinite J leaves t as it is). Returns (t, smallest eigenvalue of the symmetrized J
    at t)."""

    def step(_, carry):
        best, best_residual, best_jacobian, trial = carry
        residual, jacobian = _residual_and_jacobian(root_fn, trial)
        better = jnp.all(jnp.isfinite(residual)) & (jnp.max(jnp.abs(residual)) < jnp.max(jnp.abs(best_residual)))
        best, best_residual, best_jacobian = jax.tree.map(
            lambda new, old: jnp.where(better, new, old), (trial, residual, jacobian), (best, best_residual,
                                                                                       best_jacobian))
        return best, best_residual, best_jacobian, best - jnp.linalg.solve(best_jacobian, best_residual)

    k = t0.shape[0]
    initial = (t0, jnp.full((k,), jnp.inf, t0.dtype), jnp.eye(k, dtype=t0.dtype), t0)
    t, _, jacobian, _ = jax.lax.fori_loop(0, POLISH_STEPS + 1, step, initial)
    return t, jnp.min(jnp.linalg.eigvalsh(0.5 * (jacobian + jacobian.T)))


def _tangent_solve(linear_fn, rhs):
    """Solve ``linear_fn(x) = rhs`` for the k x k linearized stationarity condition (materialized, k is small)."""
    return jnp.linalg.solve(jax.jacfwd(linear_fn)(jnp.zeros_like(rhs)), rhs)


def _optimum(objective, args, search: _Search):
    """t* as a differentiable function of ``args`` (implicit function theorem, module docstring)."""
    free = search.free
    anchor = jax.lax.stop_gradient(search.params)

    def stationarity(t):
        slope = jax.grad(lambda s: objective(ratios_from_params(s, free), *args))(t)
        return jnp.where(free, slope, t - anchor)

    t, curvature = jax.lax.custom_root(stationarity, anchor, _newton_polish, _tangent_solve, has_aux=True)
    return t, curvature > FLAT_CURVATURE  # pinned components have identity rows (eigenvalue 1)


def _solve(objective, args, k: int, max_iter: int, gtol, ftol):
    """Search on non-differentiated ``args`` (objective(ratios, *args)), then the differentiable optimum.
    Returns (t*, ratios, search, identified)."""
    fixed = jax.lax.stop_gradient(args)
    search = _search(objective, fixed, _start(objective, fixed, k), max_iter, gtol, ftol)
    t, identified = _optimum(objective, args, search)
    return t, ratios_from_params(t, search.free), search, identified


def _result(stats, n, reml, ratios, random_effects, mean_diagonals, t, search, identified, logdet_offset=0.0):
    """Outputs from the weighted statistics at the optimum: ``b`` and ``cov(b) = s2_e (X'H^-1X)^-1`` from the GLS
    normal equations (no further pass over the n observations), ``s2_e = q / df``, variances, heritability and the
    criterion (``logdet_offset`` added to log|H|)."""
    sol = gls(stats)
    s2_e = sol.q / jnp.where(reml, n - stats.xhy.shape[0], n)
    cov = s2_e * cho_solve((sol.xhx_chol, True), jnp.eye(stats.xhy.shape[0], dtype=stats.xhx.dtype))
    variances = ratios * s2_e
    random_total = jnp.sum(variances * mean_diagonals)
    return DifferentiableFit(
        beta=sol.beta, se=jnp.sqrt(jnp.diagonal(cov)), variances=variances, residual_variance=s2_e,
        heritability=random_total / (random_total + s2_e), random_effects=random_effects,
        criterion=_profiled(stats, n, reml) + logdet_offset, log_ratios=t, boundary=~search.free,
        converged=search.converged, identified=identified, iterations=search.iterations,
    )


# ----------------------------------------------------------------------------------------------------------------
# the two paths


def weighted_data(y, X, kernels, weights) -> DenseData:
    """The weighted problem as an unweighted one: ``D y, D X, D K_k D`` with ``D = diag(sqrt(w))``."""
    root = jnp.sqrt(weights)
    return DenseData(root * y, root[:, None] * X, root[None, :, None] * kernels * root[None, None, :])


def differentiable_fit(y, X, kernels, weights=None, *, method: str = "REML", max_iter: int = DEFAULT_MAX_ITER,
                gtol: float = DEFAULT_GTOL, ftol: float = DEFAULT_FTOL) -> DifferentiableFit:
    """Differentiable REML/ML fit of ``V = sum_k s2_k K_k + s2_e diag(1/w)`` by dense Cholesky.

    y:       (n,)       response
    X:       (n, p)     fixed-effect design, intercept included (full column rank)
    kernels: (k, n, n)  symmetric PSD K_k = Z_k G_k Z_k' (:func:`group_kernel` for a grouping factor)
    weights: (n,)       positive observation weights w (None: all 1)
    Differentiable in y, X, kernels and weights (implicit function theorem at the optimum, module docstring).
    """
    weights = jnp.ones_like(y) if weights is None else weights
    return _differentiable_fit(y, X, kernels, weights, _reml_flag(method), max_iter, gtol, ftol)


@partial(jax.jit, static_argnames="max_iter")
def _differentiable_fit(y, X, kernels, weights, reml, max_iter, gtol, ftol) -> DifferentiableFit:
    n, k = y.shape[0], kernels.shape[0]
    data = weighted_data(y, X, kernels, weights)
    t, ratios, search, identified = _solve(_dense_objective, (data, reml), k, max_iter, gtol, ftol)
    stats = dense_stats(ratios, data)
    beta = gls(stats).beta
    # H^-1 (y - Xb) = D (I + sum_k r_k D K_k D)^-1 D (y - Xb)
    root = jnp.sqrt(weights)
    hinv_residual = root * structure.dense_h_inverse(ratios, data.kernels, (data.y - data.X @ beta)[:, None])[:, 0]
    random_effects = ratios[:, None] * (kernels @ hinv_residual)
    mean_diagonals = jnp.trace(kernels, axis1=1, axis2=2) / n
    return _result(stats, n, reml, ratios, random_effects, mean_diagonals, t, search, identified,
                   logdet_offset=-jnp.sum(jnp.log(weights)))


def differentiable_fit_spectral(y, X, basis, *, method: str = "REML", max_iter: int = DEFAULT_MAX_ITER,
                 gtol: float = DEFAULT_GTOL, ftol: float = DEFAULT_FTOL) -> DifferentiableFit:
    """Differentiable REML/ML fit of ``V = s2_g K + s2_e I`` in K's eigenbasis (one component, unit weights).

    y:     (n,)    response
    X:     (n, p)  fixed-effect design, intercept included
    basis: :class:`jaxlmm.structure.EigenBasis` or :class:`~jaxlmm.structure.GroupBasis` of K
           (:func:`jaxlmm.structure.spectral_basis`); fixed, not differentiated
    Differentiable in y and X. The single component's BLUP contribution is ``r K H^-1 e = e - H^-1 e``
    (``H = I + r K``, ``e = y - X b``).
    """
    return _differentiable_fit_spectral(y, X, basis, _reml_flag(method), max_iter, gtol, ftol)


@partial(jax.jit, static_argnames="max_iter")
def _differentiable_fit_spectral(y, X, basis, reml, max_iter, gtol, ftol) -> DifferentiableFit:
    n = y.shape[0]
    data = structure.spectral_data(basis, y, X)
    t, ratios, search, identified = _solve(_spectral_objective, (data, reml), 1, max_iter, gtol, ftol)
    stats = spectral_stats(ratios[0], data)
    residual = y - X @ gls(stats).beta
    # r K H^-1 e = e - H^-1 e: one rotation and one back-projection of a single column
    random_effects = (residual - structure.spectral_h_inverse(basis, ratios[0], residual[:, None])[:, 0])[None, :]
    mean_diagonals = jnp.sum(structure.eigenvalues(basis), keepdims=True) / n
    return _result(stats, n, reml, ratios, random_effects, mean_diagonals, t, search, identified)


# ----------------------------------------------------------------------------------------------------------------
# building kernels


def group_kernel(labels) -> np.ndarray:
    """(n, n) kernel ``Z Z'`` of a grouping factor (1 where two observations share a level). labels: (n,)."""
    return structure.kernel(structure.group_term(labels))


def mix_kernels(logits, kernels):
    """``K = sum_k softmax(logits)_k K_k``: a convex combination of kernels (k, n, n) with weights on the simplex."""
    return jnp.tensordot(jax.nn.softmax(logits), kernels, axes=1)
