"""Minimization of a profiled criterion over log variance ratios with optax, all state explicit.

:func:`minimize` runs ``optax.lbfgs`` (zoom line search) inside one ``jax.lax.while_loop`` and returns an
:class:`OptimizeResult` with a convergence flag instead of raising, so a vmapped batch reports failures per element.
Convergence needs both the gradient (sup norm, in units of the criterion per log-ratio) and the change of the
objective between iterations to be small; the iteration count is capped.

Parameters are log ratios ``t_k = log(s2_k / s2_e)``. A log scale never reaches a variance of 0, so components can be
*pinned* at the boundary with ``free``: a pinned component contributes ratio 0 exactly and receives no updates. The
boundary decision itself (which components to pin) is made by the caller, see :func:`jaxlmm.fit`.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

DEFAULT_MAX_ITER = 200
DEFAULT_GTOL = 1e-7
DEFAULT_FTOL = 1e-13
BOUNDARY_LOG_RATIO = 14.0  # |log ratio| beyond this (ratio < 8e-7 or > 1.2e6) while still heading outwards: boundary


class OptimizeResult(NamedTuple):
    """How a minimization ended.

    params:     (k,) final log ratios (pinned components keep their input value, meaning ratio 0)
    value:      ()   objective at params
    gradient:   (k,) gradient at params (0 for pinned components)
    iterations: ()   L-BFGS iterations taken
    converged:  ()   bool, both tests passed before the iteration cap
    start:      ()   objective at the starting point
    """

    params: jnp.ndarray
    value: jnp.ndarray
    gradient: jnp.ndarray
    iterations: jnp.ndarray
    converged: jnp.ndarray
    start: jnp.ndarray


def ratios_from_params(params: jnp.ndarray, free: jnp.ndarray) -> jnp.ndarray:
    """Variance ratios ``exp(t)`` for free components, exactly 0 for pinned ones. params, free: (k,)."""
    return jnp.where(free, jnp.exp(jnp.where(free, params, 0.0)), 0.0)


class _LoopState(NamedTuple):
    params: jnp.ndarray
    opt_state: optax.OptState
    value: jnp.ndarray
    previous_value: jnp.ndarray
    gradient: jnp.ndarray
    iterations: jnp.ndarray
    converged: jnp.ndarray


@partial(jax.jit, static_argnames=("objective", "max_iter", "transform"))
def minimize(
    objective: Callable,
    params0: jnp.ndarray,
    free: jnp.ndarray,
    args: tuple = (),
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    gtol: float = DEFAULT_GTOL,
    ftol: float = DEFAULT_FTOL,
    transform: Callable = ratios_from_params,
) -> OptimizeResult:
    """Minimize ``objective(ratios, *args)`` over log ratios of the ``free`` components.

    objective: criterion as a function of the ratios (k,) >= 0 (e.g. a profiled REML criterion)
    params0:   (k,) starting log ratios
    free:      (k,) bool, False pins that ratio at exactly 0
    transform: ``transform(params, free)`` -> the objective's first argument; default :func:`ratios_from_params`
               (a hashable callable: it is a static argument; :mod:`jaxlmm.pls` passes one for lme4's theta)
    Converged when ``max|grad| <= gtol`` and ``|f_prev - f| <= ftol * (1 + |f|)``. A component beyond
    ``+-BOUNDARY_LOG_RATIO`` whose gradient still points outwards counts as settled: it is heading for a boundary
    (variance 0, or residual variance 0 for a large ratio), where a log scale would otherwise creep one unit per
    step. The caller tests a small ratio at exactly 0 and reports a large one.
    """
    free = jnp.asarray(free, dtype=bool)

    def fun(params):
        return objective(transform(params, free), *args)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(fun)
    value0, grad0 = jax.value_and_grad(fun)(params0)

    def keep_going(state: _LoopState):
        return (~state.converged) & (state.iterations < max_iter)

    def step(state: _LoopState) -> _LoopState:
        value, grad = value_and_grad(state.params, state=state.opt_state)
        updates, opt_state = solver.update(
            grad, state.opt_state, state.params, value=value, grad=grad, value_fn=fun
        )
        params = optax.apply_updates(state.params, updates)
        new_value = optax.tree.get(opt_state, "value")
        new_grad = optax.tree.get(opt_state, "grad")
        heading_to_boundary = ((params < -BOUNDARY_LOG_RATIO) & (new_grad > 0)) | (
            (params > BOUNDARY_LOG_RATIO) & (new_grad < 0)
        )
        small_grad = jnp.max(jnp.where(heading_to_boundary, 0.0, jnp.abs(new_grad))) <= gtol
        settled = jnp.abs(value - new_value) <= ftol * (1.0 + jnp.abs(new_value))
        converged = small_grad & (settled | jnp.any(heading_to_boundary))
        return _LoopState(params, opt_state, new_value, value, new_grad, state.iterations + 1, converged)

    initial = _LoopState(
        params=params0,
        opt_state=solver.init(params0),
        value=value0,
        previous_value=jnp.asarray(jnp.inf, value0.dtype),
        gradient=grad0,
        iterations=jnp.asarray(0),
        converged=jnp.asarray(False),
    )
    final = jax.lax.while_loop(keep_going, step, initial)
    return OptimizeResult(final.params, final.value, final.gradient, final.iterations, final.converged, value0)


# ----------------------------------------------------------------------------------------------------------------
# many independent one-dimensional problems at once (the variant scan)


class ElementwiseResult(NamedTuple):
    """Per-element outcome of :func:`minimize_elementwise`; every field has the batch shape (B,)."""

    params: jnp.ndarray
    value: jnp.ndarray
    gradient: jnp.ndarray
    iterations: jnp.ndarray
    converged: jnp.ndarray
    at_bound: jnp.ndarray


def scale_by_elementwise_newton(max_step: float = 1.0) -> optax.GradientTransformationExtraArgs:
    """optax transformation for separable objectives: divide each gradient entry by its own curvature.

    For ``f(t) = sum_b f_b(t_b)`` the Hessian is diagonal and ``curvature`` (an extra argument to ``update``, same
    shape as the gradient) is its diagonal. Where the curvature is not positive the step is ``max_step`` in the
    descent direction; every step is clipped to ``[-max_step, max_step]``. Chain with ``optax.scale(-1)``.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, curvature, **extra_args):
        del params, extra_args
        step = jnp.where(curvature > 0, updates / jnp.where(curvature > 0, curvature, 1.0),
                         jnp.sign(updates) * max_step)
        return jnp.clip(step, -max_step, max_step), state

    return optax.GradientTransformationExtraArgs(init, update)


def minimize_elementwise(
    objective: Callable,
    params0: jnp.ndarray,
    lower: float,
    upper: float,
    *,
    max_iter: int = 12,
    gtol: float = 1e-8,
    xtol: float = 1e-9,
    ftol: float = 1e-12,
    max_step: float = 1.0,
    derivatives: Callable | None = None,
    polish_xtol: float | None = None,
) -> ElementwiseResult:
    """Minimize a separable objective ``objective(t) -> (B,)`` (entry b depends on t[b] only) on [lower, upper].

    Newton steps with per-element curvature from nested forward-mode derivatives (one jvp pass gives all B
    gradients, a second all B curvatures), through optax (:func:`scale_by_elementwise_newton`); each iteration
    evaluates the objective and its derivatives once. A step that raises an element's objective (beyond rounding:
    by more than ``ftol (1 + |value|)``) is not taken, and that element tries a quarter of it next; iterates are
    clipped to the bounds. An element has converged when ``|gradient| <= gtol``, or the curvature is positive and the next Newton step
    ``|gradient / curvature|`` is at most ``xtol`` (the distance to the optimum; rounding in a large criterion can
    keep the gradient itself above gtol), or it sits on a bound with the gradient pointing outwards.
    The loop stops when every element has converged (or has a non-finite gradient, reported as not converged) or
    after ``max_iter`` steps. ``derivatives(t) -> (value, gradient, curvature)``, each (B,), replaces the nested
    forward-mode pass when the caller has a cheaper way to the same numbers.

    ``polish_xtol``: an element whose next Newton step is at most this long (positive curvature) stops, and its
    returned params take that last step without another evaluation (its error is then of the order of the step
    squared: 1e-5 leaves ~1e-10); value and gradient are those before the step. None (default): every returned
    point was evaluated.
    """
    solver = optax.chain(scale_by_elementwise_newton(max_step), optax.scale(-1.0))
    ones = jnp.ones_like(params0)

    def forward_mode(t):
        (value, grad), (_, curv) = jax.jvp(lambda s: jax.jvp(objective, (s,), (ones,)), (t,), (ones,))
        return value, grad, curv

    derivatives = forward_mode if derivatives is None else derivatives

    step_tol = xtol if polish_xtol is None else max(xtol, polish_xtol)

    def status(t, grad, curv):
        at_lower = (t <= lower) & (grad > 0)
        at_upper = (t >= upper) & (grad < 0)
        small_step = (curv > 0) & (jnp.abs(grad) <= step_tol * curv)
        return (jnp.abs(grad) <= gtol) | small_step | at_lower | at_upper, at_lower | at_upper

    def finished(t, grad, curv):
        """Converged, or hopeless (non-finite gradient): either way this element stops holding the batch."""
        return status(t, grad, curv)[0] | ~jnp.isfinite(grad)

    class State(NamedTuple):
        params: jnp.ndarray
        value: jnp.ndarray
        grad: jnp.ndarray
        curv: jnp.ndarray
        iterations: jnp.ndarray
        done: jnp.ndarray
        opt_state: optax.OptState
        count: jnp.ndarray
        step_scale: jnp.ndarray  # 1, or a quarter of the last rejected step's scale

    def keep_going(state):
        return (~jnp.all(state.done)) & (state.count < max_iter)

    def step(state):
        """One derivative evaluation per iteration: try the (scaled) Newton point; keep it if the objective did not
        rise beyond rounding, else stay and try a quarter of that step next time."""
        updates, opt_state = solver.update(state.grad, state.opt_state, state.params, curvature=state.curv)
        candidate = jnp.clip(state.params + state.step_scale * updates, lower, upper)
        value, grad, curv = derivatives(candidate)
        accept = (value <= state.value + ftol * (1.0 + jnp.abs(state.value))) & ~state.done
        keep = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        params, value, grad, curv = (keep(candidate, state.params), keep(value, state.value),
                                     keep(grad, state.grad), keep(curv, state.curv))
        done = finished(params, grad, curv) | state.done
        iterations = state.iterations + jnp.where(state.done, 0, 1)
        step_scale = jnp.where(accept, 1.0, 0.25 * state.step_scale)
        return State(params, value, grad, curv, iterations, done, opt_state, state.count + 1, step_scale)

    params0 = jnp.clip(params0, lower, upper)
    value0, grad0, curv0 = derivatives(params0)
    done0 = finished(params0, grad0, curv0)
    zero = jnp.zeros(params0.shape, jnp.int32)
    initial = State(params0, value0, grad0, curv0, zero, done0, solver.init(params0), jnp.asarray(0),
                    jnp.ones_like(params0))
    final = jax.lax.while_loop(keep_going, step, initial)
    converged, at_bound = status(final.params, final.grad, final.curv)
    params = final.params
    if polish_xtol is not None:
        last_step = jnp.where(final.curv > 0, final.grad / jnp.where(final.curv > 0, final.curv, 1.0), 0.0)
        params = jnp.where(converged & ~at_bound, jnp.clip(params - last_step, lower, upper), params)
    return ElementwiseResult(params, final.value, final.grad, final.iterations, converged, at_bound)
