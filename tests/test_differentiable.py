"""Differentiable fits: values equal jaxlmm.fit, derivatives equal central differences of full refits, vmap == loop,
boundary fits give finite one-sided (constrained) derivatives.

Compilation dominates the run time, so every test reuses a few jitted functions of fixed shapes (n = 40, p = 3,
one kernel mixed from two): the forward-mode function returns the refit's values too, so finite differences need no
separate compilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlmm
from conftest import random_problem
from jaxlmm import differentiable, structure

N = 40
OUTPUTS = ("beta", "se", "variances", "residual_variance", "heritability", "random_effects", "criterion")
INPUTS = ("y", "X", "kernel_logits", "weights")


def _outputs(inputs, base, reml):
    """The fit of ``y ~ X + (kernel sum_k softmax(a)_k base_k)`` with observation weights, as a dict of outputs.

    Calls the jitted core with the method as a traced flag (what ``differentiable_fit(method=...)`` passes), so REML
    and ML tests share one compilation."""
    y, X, logits, weights = inputs
    fit = differentiable._differentiable_fit(y, X, differentiable.mix_kernels(logits, base)[None], weights, reml,
                                      max_iter=200, gtol=1e-11, ftol=1e-13)
    return fit, {name: getattr(fit, name) for name in OUTPUTS}


def _summary(outputs):
    """Five scalar outputs stacked, for the reverse-mode (jax.jacobian) check."""
    return jnp.stack([outputs["heritability"], outputs["criterion"], outputs["beta"][1], outputs["se"][2],
                      outputs["residual_variance"]])


@jax.jit
def evaluate(inputs, tangents, base, reml):
    """(fit, outputs, output tangents in forward mode, reverse-mode Jacobian of the summary) at one point.

    One ``jax.linearize`` serves both modes (forward: apply it; reverse: its transpose, which is what ``jax.vjp``
    and ``jax.jacobian`` run), so the program holds a single copy of the fit and compiles once."""
    (fit, outputs), linear = jax.linearize(lambda i: _outputs(i, base, reml), inputs)
    out_tangents = linear(tangents)[1]
    def summary_linear(t):
        return _summary(linear(t)[1])

    transpose = jax.linear_transpose(summary_linear, inputs)
    jacobian = jax.vmap(lambda c: transpose(c)[0])(jnp.eye(5, dtype=inputs[0].dtype))
    return fit, outputs, out_tangents, jacobian


def problem(rng, kind):
    """Inputs (y, X, logits, weights) and two base kernels: two grouping factors or two kinships."""
    y, X, groups, K = random_problem(rng, n=N, kinship=kind == "kinship")
    if kind == "groups":
        other = rng.integers(0, 5, size=N)
        base = np.stack([differentiable.group_kernel(groups), differentiable.group_kernel(other)])
        y = y + rng.normal(size=5)[other]
    else:
        W = rng.normal(size=(N, 2 * N))
        base = np.stack([K, W @ W.T / (2 * N)])
    inputs = (y, X, np.array([0.4, -0.3]), rng.uniform(0.5, 2.0, size=N))
    return tuple(map(jnp.asarray, inputs)), jnp.asarray(base)


def refit_difference(inputs, direction, base, method, h):
    """Central difference (f(x + h v) - f(x - h v)) / 2h of every output, each side a full refit."""
    zeros = jax.tree.map(jnp.zeros_like, inputs)
    shifted = [jax.tree.map(lambda x, v, sign=sign: x + sign * h * v, inputs, direction) for sign in (1.0, -1.0)]
    plus, minus = (evaluate(x, zeros, base, method == "REML")[1] for x in shifted)
    return {name: (plus[name] - minus[name]) / (2 * h) for name in OUTPUTS}


def relative_error(got, want):
    return float(np.max(np.abs(np.asarray(got) - np.asarray(want))) / max(np.max(np.abs(np.asarray(want))), 1e-12))


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("kind", ["groups", "kinship"])
def test_derivatives_match_central_differences_of_refits(x64, rng, kind, method):
    inputs, base = problem(rng, kind)
    zeros = jax.tree.map(jnp.zeros_like, inputs)
    fit, _, _, jacobian = evaluate(inputs, zeros, base, method == "REML")
    assert fit.converged and fit.identified and not fit.boundary.any()
    worst = {}
    for j, name in enumerate(INPUTS):
        direction = list(zeros)
        direction[j] = jnp.asarray(rng.normal(size=inputs[j].shape))
        direction = tuple(direction)
        tangents = evaluate(inputs, direction, base, method == "REML")[2]
        differences = refit_difference(inputs, direction, base, method, h=1e-5 if name == "weights" else 1e-4)
        worst[name] = max(relative_error(tangents[out], differences[out]) for out in OUTPUTS)
        # reverse mode (jax.jacobian) contracted with the direction equals forward mode
        reverse = jnp.tensordot(jacobian[j], direction[j], axes=direction[j].ndim)
        np.testing.assert_allclose(reverse, _summary(tangents), rtol=1e-9, atol=1e-12)
    print(f"{kind} {method}: largest relative difference to refits per input", worst)
    assert max(worst.values()) < 1e-5, worst


@pytest.mark.parametrize("kind, method", [("groups", "REML"), ("kinship", "ML")])  # each jaxlmm.fit compiles anew
def test_values_equal_jaxlmm_fit(x64, rng, kind, method):
    """Unit weights and one kernel (both base kernels equal): the dense and spectral fits reproduce jaxlmm.fit."""
    y, X, groups, K = random_problem(rng, n=N, kinship=True)
    term = structure.group_term(groups) if kind == "groups" else structure.kinship_term(K)
    kernel = jnp.asarray(structure.kernel(term))
    inputs = (jnp.asarray(y), jnp.asarray(X), jnp.zeros(2), jnp.ones(N))
    dense = evaluate(inputs, jax.tree.map(jnp.zeros_like, inputs), jnp.stack([kernel, kernel]), method == "REML")[0]
    spectral = jaxlmm.differentiable_fit_spectral(jnp.asarray(y), jnp.asarray(X), structure.spectral_basis(term),
                                                  method=method)
    want = jaxlmm.fit(y, X, intercept=False, method=method,
                      **({"groups": groups} if kind == "groups" else {"kinship": K}))
    blups = want.ranef[0][term.group_codes] if kind == "groups" else want.ranef[0]
    for got in (dense, spectral):
        np.testing.assert_allclose(got.beta, want.fixef, rtol=1e-8)
        np.testing.assert_allclose(got.se, want.se, rtol=1e-8)
        np.testing.assert_allclose(got.variances, want.variances, rtol=1e-8)
        np.testing.assert_allclose(got.residual_variance, want.residual_variance, rtol=1e-8)
        np.testing.assert_allclose(got.heritability, want.heritability, rtol=1e-8)
        np.testing.assert_allclose(got.criterion, want.criterion, rtol=1e-10)
        np.testing.assert_allclose(got.random_effects[0], blups, rtol=1e-7, atol=1e-10)
        assert got.converged and not got.boundary.any()


def test_boundary_derivative_is_finite_and_constrained(x64, rng):
    """No group effect: the group variance is pinned at 0 (flagged), its derivative is 0, every derivative is
    finite, and the constrained derivatives equal differences of refits on both sides (refits stay at 0)."""
    y, X, groups, K = random_problem(rng, n=N)
    noise = rng.normal(size=N)
    noise = noise - (np.bincount(groups, noise, 7) / np.bincount(groups, minlength=7))[groups]  # no between-group part
    y = X @ np.array([0.5, 1.0, -1.0]) + noise
    kernel = jnp.asarray(differentiable.group_kernel(groups))
    inputs = (jnp.asarray(y), jnp.asarray(X), jnp.zeros(2), jnp.ones(N))
    base = jnp.stack([kernel, kernel])
    reference = jaxlmm.fit(y, X, intercept=False, groups=groups)
    assert reference.singular[0]
    direction = (jnp.asarray(rng.normal(size=N)), jnp.zeros((N, 3)), jnp.zeros(2), jnp.asarray(rng.normal(size=N)))
    fit, _, tangents, jacobian = evaluate(inputs, direction, base, True)
    assert bool(fit.boundary[0]) and float(fit.variances[0]) == 0.0 and float(fit.heritability) == 0.0
    np.testing.assert_allclose(fit.residual_variance, reference.residual_variance, rtol=1e-10)
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in jax.tree.leaves(tangents))
    assert float(tangents["variances"][0]) == 0.0 and float(tangents["heritability"]) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(j))) for j in jacobian)
    differences = refit_difference(inputs, direction, base, "REML", h=1e-4)
    for name in ("beta", "se", "residual_variance", "criterion"):
        assert relative_error(tangents[name], differences[name]) < 1e-6, name


def test_vmap_over_variants_equals_loop(x64, rng):
    """Per-variant gradients for a chunk of variants as the tested covariate (spectral path, as a scan); the
    single-variant gradient also equals central differences of refits."""
    y, X, groups, K = random_problem(rng, n=N, kinship=True)
    basis = structure.spectral_basis(structure.kinship_term(K))
    variants = jnp.asarray(rng.binomial(2, 0.3, size=(N, 4)).astype(float))

    def variant_fit(y, variant):
        design = jnp.concatenate([jnp.asarray(X[:, :2]), variant[:, None]], axis=1)
        return jaxlmm.differentiable_fit_spectral(y, design, basis, gtol=1e-11)

    def variant_effect(y, variant):
        fit = variant_fit(y, variant)
        return fit.beta[-1] / fit.se[-1]  # the variant's t statistic

    gradient = jax.jit(jax.jacobian(variant_effect))  # jax.jacobian of a scalar output: its gradient
    batched = jax.jit(jax.vmap(jax.grad(variant_effect), in_axes=(None, 1)))(jnp.asarray(y), variants)
    looped = jnp.stack([gradient(jnp.asarray(y), variants[:, j]) for j in range(variants.shape[1])])
    np.testing.assert_allclose(batched, looped, rtol=1e-10, atol=1e-12)
    assert bool(jnp.all(jnp.isfinite(batched))) and float(jnp.min(jnp.abs(batched).max(axis=1))) > 0
    direction, h = jnp.asarray(rng.normal(size=N)), 1e-4
    difference = (variant_effect(jnp.asarray(y) + h * direction, variants[:, 0])
                  - variant_effect(jnp.asarray(y) - h * direction, variants[:, 0])) / (2 * h)
    assert relative_error(looped[0] @ direction, difference) < 1e-5
