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
import numpy as np
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
    """Per-element outcome of :func:`minimize_elementwise`; every field has the batch shape (B,).

    polish: the last step taken without evaluation (0 where none; see ``polish_xtol``); params include it.
    aux: with ``has_aux``, the auxiliary output of the last evaluation, at ``params - polish``.
    """

    params: jnp.ndarray
    value: jnp.ndarray
    gradient: jnp.ndarray
    iterations: jnp.ndarray
    converged: jnp.ndarray
    at_bound: jnp.ndarray
    polish: jnp.ndarray | None = None
    aux: object = None


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


def newton_step(grad, curv):
    """The Newton step ``-g/h`` (0 where the curvature is not positive)."""
    return jnp.where(curv > 0, -grad / jnp.where(curv > 0, curv, 1.0), 0.0)


def minimize_elementwise(
    objective: Callable | None,
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
    has_aux: bool = False,
    lane_derivatives: Callable | None = None,
    compact_lanes: int | None = None,
    settled: Callable | None = None,
    skip: jnp.ndarray | None = None,
    first_lanes: int | None = None,
) -> ElementwiseResult:
    """Minimize a separable objective ``objective(t) -> (B,)`` (entry b depends on t[b] only) on [lower, upper].

    Newton steps with per-element curvature from nested forward-mode derivatives (one jvp pass gives all B
    gradients, a second all B curvatures), through optax (:func:`scale_by_elementwise_newton`); each iteration
    evaluates the objective and its derivatives once. A step that raises an element's objective (beyond rounding:
    by more than ``ftol (1 + |value|)``) is not taken, and that element tries a quarter of it next; iterates are
    clipped to the bounds. An element has converged when ``|gradient| <= gtol``, or the curvature is positive and the
    next Newton step is at most ``xtol`` (the distance to the optimum; rounding in a
    large criterion can keep the gradient itself above gtol), or it sits on a bound with the gradient pointing
    outwards. The loop stops when every element has converged (or has a non-finite gradient, reported as not
    converged) or after ``max_iter`` steps. ``derivatives(t) -> (value, gradient, curvature)``, each (B,), replaces
    the nested forward-mode pass when the caller has a cheaper way to the same numbers; with ``has_aux`` it returns
    a fourth item, a pytree of (B,)-leading arrays kept for the last accepted point of each element.

    ``polish_xtol``: an element whose next step is at most this long (positive curvature) stops, and its returned
    params take that last step without another evaluation (its error is then of the order of the step squared:
    1e-5 leaves ~1e-10); value and gradient are those before the step. None (default): every returned point was
    evaluated.

    ``lane_derivatives(t (K,), lanes (K,) int)``, like ``derivatives`` for the listed elements only, with
    ``compact_lanes=K``: after the first evaluation (of the whole batch), every iteration evaluates at most K
    elements still going, gathered (:func:`_gathered_loop`), so a few slow elements do not cost whole-batch
    evaluations. Every element's iterates are the same either way; the Newton transformation is stateless, which is
    what makes gathering elements valid. With ``objective`` and ``derivatives`` both None, a whole-batch evaluation
    is ``lane_derivatives`` of every element.

    ``settled(value, gradient, curvature, index) -> bool``, applied after each element's first evaluation (index:
    the elements' positions in the batch, as the other arguments are those of some elements only when gathered):
    elements the caller knows it does not need refined (e.g. an optimum elsewhere certainly beats this one) stop
    there.

    ``skip`` (B,) bool: elements the caller needs no optimum for, known before any evaluation. They are not fitted
    and come back at their start with value inf, gradient NaN, zero aux, not converged, no iterations; when
    gathered, those past the first K1 are not evaluated at all (those the first evaluation covers are evaluated and
    dropped). ``first_lanes=K1`` (with ``lane_derivatives`` and ``compact_lanes``): first evaluations go over the
    batch K1 elements at a time as they lie, ``[0, K1)``, ``[K1, 2 K1)``, ... (``lane_derivatives`` gets a numpy
    ``arange`` as their index, so it may slice rather than gather); a slice with at most ``compact_lanes`` elements
    to fit is left to the gathered loop (one gathered round takes them all), decided at run time. Together they make
    a batch whose slices that need fitting pay for those only, with shapes fixed at compile time (the scan: REML
    lanes first, then ML lanes that are fitted at mouse HS1940 and skipped at N = 500).

    Every path starts from the same unevaluated elements; the first evaluation is an ordinary step of the loop
    (``advance``), which takes whatever a fresh element's evaluation gives.
    """
    solver = optax.chain(scale_by_elementwise_newton(max_step), optax.scale(-1.0))
    ones = jnp.ones_like(params0)

    def forward_mode(t):
        (value, grad), (_, curv) = jax.jvp(lambda s: jax.jvp(objective, (s,), (ones,)), (t,), (ones,))
        return value, grad, curv

    def with_aux(evaluate):
        return evaluate if has_aux else (lambda *args: (*evaluate(*args), ()))

    step_tol = xtol if polish_xtol is None else max(xtol, polish_xtol)

    def status(t, grad, curv):
        at_lower = (t <= lower) & (grad > 0)
        at_upper = (t >= upper) & (grad < 0)
        small_step = (curv > 0) & (jnp.abs(newton_step(grad, curv)) <= step_tol)
        return (jnp.abs(grad) <= gtol) | small_step | at_lower | at_upper, at_lower | at_upper

    def finished(t, grad, curv):
        """Converged, or hopeless (non-finite gradient): either way this element stops holding the batch."""
        return status(t, grad, curv)[0] | ~jnp.isfinite(grad)

    class Lanes(NamedTuple):
        """The per-element part of the loop state, (B,) each (or (K,) when gathered)."""

        params: jnp.ndarray
        value: jnp.ndarray
        grad: jnp.ndarray
        curv: jnp.ndarray
        iterations: jnp.ndarray
        done: jnp.ndarray
        step_scale: jnp.ndarray  # 1, or a quarter of the last rejected step's scale
        fresh: jnp.ndarray  # not evaluated yet: the next evaluation is at params, and is taken whatever it gives
        element: jnp.ndarray  # the element's position in the batch (for settled)
        aux: object

    def advance(lanes: Lanes, evaluate) -> Lanes:
        """One derivative evaluation: try the (scaled) Newton point; keep it if the objective did not rise beyond
        rounding, else stay and try a quarter of that step next time. A fresh element is evaluated at its start."""
        updates, _ = solver.update(lanes.grad, solver.init(lanes.params), lanes.params, curvature=lanes.curv)
        candidate = jnp.where(lanes.fresh, lanes.params,
                              jnp.clip(lanes.params + lanes.step_scale * updates, lower, upper))
        value, grad, curv, aux = evaluate(candidate)
        first = lanes.fresh & ~lanes.done
        accept = (first | (value <= lanes.value + ftol * (1.0 + jnp.abs(lanes.value)))) & ~lanes.done
        keep = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        params, value, grad, curv = (keep(candidate, lanes.params), keep(value, lanes.value),
                                     keep(grad, lanes.grad), keep(curv, lanes.curv))
        aux = jax.tree.map(lambda new, old: jnp.where(accept.reshape(accept.shape + (1,) * (new.ndim - 1)), new, old),
                           aux, lanes.aux)
        iterations = lanes.iterations + jnp.where(lanes.done | lanes.fresh, 0, 1)
        done = finished(params, grad, curv) | lanes.done | (iterations >= max_iter)
        if settled is not None:
            done = done | (first & settled(value, grad, curv, lanes.element.astype(jnp.int32)))
        step_scale = jnp.where(accept, 1.0, 0.25 * lanes.step_scale)
        return Lanes(params, value, grad, curv, iterations, done, step_scale, lanes.fresh & lanes.done, lanes.element,
                     aux)

    size = params0.shape[0] if params0.ndim else 1
    params0 = jnp.clip(params0, lower, upper)
    gathered = (lane_derivatives is not None and compact_lanes is not None and params0.ndim == 1
                and compact_lanes < size)
    evaluate_lanes = with_aux(lane_derivatives) if gathered else None
    if derivatives is not None:
        evaluate_all = with_aux(derivatives)
    elif objective is not None:
        evaluate_all = with_aux(forward_mode)
    elif lane_derivatives is not None:  # the whole batch is every element listed
        evaluate_all = with_aux(lambda t: lane_derivatives(t, np.arange(size)))
    else:
        raise ValueError("minimize_elementwise needs objective, derivatives or lane_derivatives")
    aux_like = jax.eval_shape(evaluate_all, params0)[3]
    unknown = jnp.full_like(params0, jnp.nan)
    skip = jnp.zeros(params0.shape, bool) if skip is None else skip
    # every element starts unevaluated (fresh); skipped ones start done, so they are never accepted
    fresh = Lanes(params0, jnp.full_like(params0, jnp.inf), unknown, unknown, jnp.zeros(params0.shape, jnp.int32),
                  skip, jnp.ones_like(params0), jnp.ones(params0.shape, bool), jnp.arange(size).reshape(params0.shape),
                  jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), aux_like))
    if gathered and first_lanes is not None:
        # first rounds on slices of first_lanes elements (those with more than compact_lanes to fit); the rest
        # wait for their turn in the gathered loop
        final = _gathered_loop(advance, evaluate_lanes, fresh, compact_lanes, max_iter,
                               first=min(first_lanes or size, size))
    elif gathered:
        final = _gathered_loop(advance, evaluate_lanes, advance(fresh, evaluate_all), compact_lanes, max_iter)
    else:
        def step(carry):
            lanes, count = carry
            return advance(lanes, evaluate_all), count + 1

        final, _ = jax.lax.while_loop(lambda carry: (~jnp.all(carry[0].done)) & (carry[1] < max_iter), step,
                                      (advance(fresh, evaluate_all), jnp.asarray(0)))
    converged, at_bound = status(final.params, final.grad, final.curv)
    polish = jnp.zeros_like(final.params)
    if polish_xtol is not None:
        last = jnp.clip(final.params + newton_step(final.grad, final.curv), lower, upper) - final.params
        polish = jnp.where(converged & ~at_bound, last, 0.0)
    return ElementwiseResult(final.params + polish, final.value, final.grad, final.iterations, converged, at_bound,
                             polish, final.aux if has_aux else None)


def _gathered_loop(advance, evaluate_lanes, initial, k, max_iter, first=None):
    """The loop of :func:`minimize_elementwise` in gathered batches of k elements: each iteration takes the first k
    elements still going, gathers them (padding with repeats of the last element, whose results are dropped),
    advances them one evaluation and puts them back; more than k elements still going take several iterations.
    advance(lanes, evaluate) is the one-evaluation update; evaluate_lanes(t (k,), index (k,)) -> (value, grad,
    curv, aux); initial: the starting points of all elements (every leaf (B, ...)), evaluated or fresh; first: rounds
    taken before the loop on consecutive slices of ``first`` elements as they lie (index a numpy ``arange``, so the
    caller can slice its data instead of gathering it), advancing those still going; a slice with at most k of
    them is left to the loop (:func:`jax.lax.cond`: a gathered round costs less than a whole slice then).

    The loop carries the state as one (F, B) matrix (every leaf flattened, flags and counts as floats, exactly), so
    an iteration is one gather in and one gather back: per-leaf gathers and scatters made the compiled program
    three times larger."""
    size = initial.params.shape[0]
    leaves, treedef = jax.tree.flatten(initial)
    dtype = initial.params.dtype
    widths = [int(np.prod(leaf.shape[1:], dtype=int)) for leaf in leaves]

    def stack(tree):
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1).T.astype(dtype) for leaf in jax.tree.leaves(tree)])

    def unstack(matrix):
        rows = np.cumsum([0] + widths)
        parts = [matrix[a:b].T.reshape((matrix.shape[1],) + leaf.shape[1:]).astype(leaf.dtype)
                 for a, b, leaf in zip(rows[:-1], rows[1:], leaves)]
        return jax.tree.unflatten(treedef, parts)

    done_row = list(initial._fields).index("done")  # params .. done are (B,) leaves ahead of aux

    def step(carry, k=k):
        state, count = carry
        index = jnp.nonzero(state[done_row] == 0, size=k, fill_value=size)[0]  # size: padding
        clipped = jnp.minimum(index, size - 1)
        sub = unstack(state[:, clipped])
        sub = sub._replace(done=sub.done | (index >= size))
        new = stack(advance(sub, lambda t: evaluate_lanes(t, clipped)))
        slot = jnp.full(size, k).at[index].set(jnp.arange(k), mode="drop")  # lane -> its place in the batch, or k
        return jnp.where(slot < k, new[:, jnp.minimum(slot, k - 1)], state), count + 1

    state = stack(initial)
    for begin in range(0, size, first) if first else ():  # slices of `first` elements as they lie: not gathered
        lanes = np.arange(begin, min(begin + first, size))

        def evaluated(state, lanes=lanes):
            part = state[:, lanes[0]:lanes[-1] + 1]
            new = stack(advance(unstack(part), lambda t: evaluate_lanes(t, lanes)))
            return jax.lax.dynamic_update_slice_in_dim(state, new, int(lanes[0]), axis=1)

        going = jnp.sum(state[done_row, lanes[0]:lanes[-1] + 1] == 0)
        state = evaluated(state) if begin == 0 else jax.lax.cond(going > k, evaluated, lambda state: state, state)
    carry = (state, jnp.asarray(0))
    rounds = (max_iter + 1) * (-(-size // k))  # enough for every element's first evaluation and max_iter steps
    final, _ = jax.lax.while_loop(lambda carry: jnp.any(carry[0][done_row] == 0) & (carry[1] < rounds), step, carry)
    return unstack(final)
