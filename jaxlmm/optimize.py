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


@partial(jax.jit, static_argnames=("objective", "max_iter"))
def minimize(
    objective: Callable,
    params0: jnp.ndarray,
    free: jnp.ndarray,
    args: tuple = (),
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    gtol: float = DEFAULT_GTOL,
    ftol: float = DEFAULT_FTOL,
) -> OptimizeResult:
    """Minimize ``objective(ratios, *args)`` over log ratios of the ``free`` components.

    objective: criterion as a function of the ratios (k,) >= 0 (e.g. a profiled REML criterion)
    params0:   (k,) starting log ratios
    free:      (k,) bool, False pins that ratio at exactly 0
    Converged when ``max|grad| <= gtol`` and ``|f_prev - f| <= ftol * (1 + |f|)``. A component beyond
    ``+-BOUNDARY_LOG_RATIO`` whose gradient still points outwards counts as settled: it is heading for a boundary
    (variance 0, or residual variance 0 for a large ratio), where a log scale would otherwise creep one unit per
    step. The caller tests a small ratio at exactly 0 and reports a large one.
    """
    free = jnp.asarray(free, dtype=bool)

    def fun(params):
        return objective(ratios_from_params(params, free), *args)

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
