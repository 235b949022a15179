"""Likelihoods: dense and spectral forms against a textbook oracle on V, and gradient checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import random_problem
from jaxlmm import likelihood, structure


def oracle(y, X, kernels, variances, residual, method):
    """-2 log L straight from V with numpy: slogdet(V), X'V^-1X, GLS residual."""
    n, p = X.shape
    V = sum(v * K for v, K in zip(variances, kernels)) + residual * np.eye(n)
    Vi = np.linalg.inv(V)
    xvx = X.T @ Vi @ X
    beta = np.linalg.solve(xvx, X.T @ Vi @ y)
    r = y - X @ beta
    value = np.linalg.slogdet(V)[1] + r @ Vi @ r
    if method == "REML":
        return value + np.linalg.slogdet(xvx)[1] + (n - p) * np.log(2 * np.pi)
    return value + n * np.log(2 * np.pi)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_dense_criterion_matches_textbook(x64, rng, method):
    y, X, groups, K = random_problem(rng)
    Kg = structure.kernel(structure.group_term(groups))
    data = likelihood.DenseData(jnp.asarray(y), jnp.asarray(X), jnp.asarray(np.stack([Kg, K])))
    log_var = np.log([0.7, 1.3, 0.9])
    got = likelihood.dense_criterion(jnp.asarray(log_var), data, method)
    want = oracle(y, X, [Kg, K], [0.7, 1.3], 0.9, method)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("kind", ["groups", "kinship"])
def test_spectral_criterion_matches_textbook(x64, rng, method, kind):
    y, X, groups, K = random_problem(rng)
    term = structure.group_term(groups) if kind == "groups" else structure.kinship_term(K)
    basis = structure.spectral_basis(term)
    data = structure.spectral_data(basis, jnp.asarray(y), jnp.asarray(X))
    got = likelihood.spectral_criterion(jnp.log(jnp.array([0.6, 1.1])), data, method)
    want = oracle(y, X, [structure.kernel(term)], [0.6], 1.1, method)
    np.testing.assert_allclose(got, want, rtol=1e-11)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_profiled_equals_criterion_at_profiled_residual(x64, rng, method):
    """Profiling: the profiled criterion equals the full one at s2_e = q/df, and that s2_e minimizes it."""
    y, X, groups, K = random_problem(rng)
    basis = structure.spectral_basis(structure.group_term(groups))
    data = structure.spectral_data(basis, jnp.asarray(y), jnp.asarray(X))
    ratio = 0.8
    sol = likelihood.gls(likelihood.spectral_stats(ratio, data))
    s2_e = sol.q / likelihood.residual_df(len(y), X.shape[1], method)
    profiled = likelihood.spectral_profiled_criterion(jnp.log(ratio), data, method)
    full = likelihood.spectral_criterion(jnp.log(jnp.array([ratio * s2_e, s2_e])), data, method)
    np.testing.assert_allclose(profiled, full, rtol=1e-13)
    for factor in (0.9, 1.1):
        worse = likelihood.spectral_criterion(jnp.log(jnp.array([ratio * s2_e, s2_e * factor])) , data, method)
        assert worse > full


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("log_ratio", [0.3, -9.0])  # interior and near the boundary
def test_gradients_spectral(x64, rng, method, log_ratio):
    y, X, groups, K = random_problem(rng)
    basis = structure.spectral_basis(structure.kinship_term(K))
    data = structure.spectral_data(basis, jnp.asarray(y), jnp.asarray(X))
    check_grads(lambda t: likelihood.spectral_profiled_criterion(t, data, method),
                (jnp.asarray(log_ratio),), order=2, modes=["fwd", "rev"])
    check_grads(lambda t: likelihood.spectral_criterion(t, data, method),
                (jnp.array([log_ratio, 0.2]),), order=2, modes=["fwd", "rev"])


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("log_ratios", [(0.2, -0.4), (-9.0, 0.5)])
def test_gradients_dense(x64, rng, method, log_ratios):
    y, X, groups, K = random_problem(rng, n=25)
    Kg = structure.kernel(structure.group_term(groups))
    data = likelihood.DenseData(jnp.asarray(y), jnp.asarray(X), jnp.asarray(np.stack([Kg, K])))
    check_grads(lambda t: likelihood.dense_profiled_criterion(t, data, method),
                (jnp.asarray(log_ratios),), order=2, modes=["fwd", "rev"])
    check_grads(lambda t: likelihood.dense_criterion(t, data, method),
                (jnp.array([*log_ratios, 0.1]),), order=2, modes=["fwd", "rev"])


def test_gradient_against_finite_differences(x64, rng):
    """Autodiff gradient of the profiled REML criterion equals a central difference of the numpy oracle."""
    y, X, groups, K = random_problem(rng)
    term = structure.group_term(groups)
    data = structure.spectral_data(structure.spectral_basis(term), jnp.asarray(y), jnp.asarray(X))
    t = 0.4
    grad = jax.grad(lambda t: likelihood.spectral_profiled_criterion(t, data, "REML"))(t)

    def profiled_oracle(t):
        H = np.eye(len(y)) + np.exp(t) * structure.kernel(term)
        Hi = np.linalg.inv(H)
        beta = np.linalg.solve(X.T @ Hi @ X, X.T @ Hi @ y)
        q = (y - X @ beta) @ Hi @ (y - X @ beta)
        return oracle(y, X, [structure.kernel(term)], [np.exp(t) * q / (len(y) - 3)], q / (len(y) - 3), "REML")

    h = 1e-5
    np.testing.assert_allclose(grad, (profiled_oracle(t + h) - profiled_oracle(t - h)) / (2 * h), rtol=1e-6)


def test_float32_close_to_float64(rng):
    """Without x64 the same functions run in float32 and agree to single precision."""
    y, X, groups, K = random_problem(rng)
    with jax.enable_x64(True):
        basis = structure.spectral_basis(structure.group_term(groups))
        data64 = structure.spectral_data(basis, jnp.asarray(y), jnp.asarray(X))
        want = likelihood.spectral_profiled_criterion(jnp.asarray(0.3), data64, "REML")
    with jax.enable_x64(False):
        data32 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), dtype=jnp.float32), data64)
        got = likelihood.spectral_profiled_criterion(jnp.asarray(0.3, jnp.float32), data32, "REML")
        assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
