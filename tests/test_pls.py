"""The PLS likelihood against a dense slogdet(V) oracle, its gradients, and a kinship term against the dense path."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.test_util import check_grads

import jaxlmm
import jaxlmm.likelihood
from jaxlmm import pls, reterms
from jaxlmm.likelihood import DenseData
from jaxlmm.lmer import lmer
from jaxlmm.validate import InputError

LOG_2PI = np.log(2 * np.pi)


def small_table(seed=0, n=40):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 6, n)
    h = rng.integers(0, 4, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=6)[g] + 0.6 * rng.normal(size=6)[g] * x + rng.normal(size=4)[h] + rng.normal(size=n)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{v}" for v in g], "h": [f"h{v}" for v in h], "a": g % 2})


def kinship_matrix(n, seed=1):
    rng = np.random.default_rng(seed)
    G = rng.binomial(2, 0.3, size=(n, 3 * n)).astype(float)
    G -= G.mean(0)
    return G @ G.T / G.shape[1] + 1e-3 * np.eye(n)


CASES = {  # random part -> uses the kinship block
    "crossed_slope": ("(x | g) + (1 | h)", False),
    "uncorrelated_nested": ("(x || g) + (1 | g/a)", False),
    "kinship": ("(1 | g)", True),
}


def model(case):
    random, with_kinship = CASES[case]
    table = small_table()
    _, specs = reterms.split_random(random)
    blocks = reterms.blocks_from_frame(specs, table)
    if with_kinship:
        blocks.append(reterms.kinship_block(kinship_matrix(len(table))))
    blocks = reterms.order_blocks(blocks)
    X = np.c_[np.ones(len(table)), table.x]
    y = table.y.to_numpy()
    data, layout = pls.pls_data(blocks, X, y)
    theta = np.where(layout.theta_is_diagonal(), 0.8, 0.3) + 0.05 * np.arange(layout.n_theta)
    return y, X, blocks, data, layout, theta


def dense_oracle(theta, y, X, blocks, layout, reml):
    """-2 log L from V = s2 (I + Z Lambda Lambda' Z') with np.linalg.slogdet, s2 profiled (lme4's units)."""
    Z = np.concatenate([reterms.dense_z(b) for b in blocks], axis=1)
    factors = [np.asarray(t) for t in pls.relative_factors(jnp.asarray(theta), layout)]
    lam = np.zeros((Z.shape[1], Z.shape[1]))
    at = 0
    for (levels, k), T in zip(layout.sizes, factors):
        lam[at:at + levels * k, at:at + levels * k] = np.kron(np.eye(levels), T)
        at += levels * k
    H = np.eye(len(y)) + Z @ lam @ lam.T @ Z.T
    Hi = np.linalg.inv(H)
    xhx = X.T @ Hi @ X
    beta = np.linalg.solve(xhx, X.T @ Hi @ y)
    r = y - X @ beta
    q = r @ Hi @ r
    n, p = X.shape
    df = n - p if reml else n
    value = np.linalg.slogdet(H)[1] + df * (1 + LOG_2PI + np.log(q / df))
    return value + np.linalg.slogdet(xhx)[1] if reml else value


@pytest.mark.parametrize("case", list(CASES))
def test_pls_criterion_matches_dense_slogdet_and_has_correct_gradients(case):
    with jax.enable_x64(True):
        y, X, blocks, data, layout, theta = model(case)
        objective = pls.PLSObjective(layout)
        transform = pls.ThetaTransform(tuple(bool(v) for v in layout.theta_is_diagonal()))
        # REML and ML share one compiled function (reml is traced); gradients checked in the optimizer's view
        # (log diagonals, the first diagonal pinned at exactly 0), which chains through d criterion / d theta
        criterion = jax.jit(lambda t, reml: objective(t, data, reml))
        unconstrained = jax.jit(lambda t, free, reml: objective(transform(t, free), data, reml))
        free = jnp.asarray(np.arange(layout.n_theta) != 0)
        for reml in (jnp.asarray(True), jnp.asarray(False)):
            got = float(criterion(jnp.asarray(theta), reml))
            assert got == pytest.approx(dense_oracle(theta, y, X, blocks, layout, bool(reml)), rel=1e-11)
            check_grads(lambda t, reml=reml: unconstrained(t, free, reml), (jnp.asarray(np.log(theta)),), order=1,
                        modes=("rev",), atol=1e-6, rtol=1e-6)


def test_blocked_factor_sees_no_n_by_n_matrix_for_many_levels():
    """5000 levels of the first factor: A's first block stays (levels, k, k); the fit is quick and finite."""
    rng = np.random.default_rng(3)
    n, levels = 20000, 5000
    g = rng.integers(0, levels, n)
    x = rng.normal(size=n)
    y = 0.3 * x + rng.normal(size=levels)[g] + rng.normal(size=n)
    fit = lmer("y ~ x + (1 | g)", {"y": y, "x": x, "g": g})
    assert fit.ranef[0].shape == (len(np.unique(g)), 1) and fit.converged
    assert 0.7 < fit.covariances[0][0, 0] < 1.3 and 0.85 < fit.residual_variance < 1.15


def test_kinship_beside_a_factor_matches_the_dense_path():
    """lmer with a kinship term vs the dense-V fitter held at the same variance ratios: criterion, BLUE, BLUPs and
    their conditional variances agree; the PLS fit is at a stationary point."""
    table = small_table(seed=5)
    K = kinship_matrix(len(table), seed=6)
    mixed = lmer("y ~ x + (1 | g)", table, kinship=K)
    assert mixed.converged and np.abs(mixed.gradient).max() < 1e-5
    variances = np.array([mixed.covariances[0][0, 0], mixed.covariances[1][0, 0]])
    dense = jaxlmm.fit(table.y.to_numpy(), table.x.to_numpy(), groups=table.g.to_numpy(), kinship=K,
                       variance_ratios=variances / mixed.residual_variance)
    assert mixed.criterion == pytest.approx(dense.criterion, abs=1e-8)
    np.testing.assert_allclose(mixed.fixef, dense.fixef, rtol=1e-8)
    np.testing.assert_allclose(mixed.se, dense.se, rtol=1e-8)
    np.testing.assert_allclose(mixed.ranef[0][:, 0], dense.ranef[0], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(mixed.ranef[1][:, 0], dense.ranef[1], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(mixed.ranef_condvar[1][:, 0, 0], dense.ranef_condvar[1], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(mixed.ranef_condvar[0][:, 0, 0], dense.ranef_condvar[0], rtol=1e-7, atol=1e-12)


def test_formula_errors_name_the_term_or_column():
    table = small_table()
    with pytest.raises(InputError, match="nope"):
        lmer("y ~ x + (1 | nope)", table)
    with pytest.raises(InputError, match="zz"):
        lmer("y ~ x + (zz | g)", table)
    with pytest.raises(InputError, match="no random-effect term"):
        lmer("y ~ x", table)
    with pytest.raises(InputError, match="levels"):
        lmer("y ~ x + (1 | id)", table.assign(id=np.arange(len(table))))


def test_nested_and_uncorrelated_terms_parse_as_lme4():
    fixed, specs = reterms.split_random("x + (1 | a/b) + (x || g)")
    assert fixed == "x"
    assert [(s.expr, s.group, s.correlated) for s in specs] == [
        ("1", "a", True), ("1", "b:a", True), ("x", "g", False)]


def test_residual_variance_heading_to_zero_stops_at_the_theta_cap():
    """Kinship only (an empty leading block) with a full-rank K where the optimum has s2_e -> 0: theta stops at
    e^LOG_THETA_MAX, the criterion there is the dense one (no rounding-noise optimum beyond), and the fit says so."""
    rng = np.random.default_rng(7)
    K = kinship_matrix(40, seed=8)
    y = 1.0 + np.linalg.cholesky(K) @ rng.normal(size=40) * 1.5 + 0.7 * rng.normal(size=40)
    fit = lmer("y ~ 1", {"y": y}, kinship=K)
    assert fit.theta[0] == pytest.approx(np.exp(pls.LOG_THETA_MAX), rel=1e-12)
    assert any("residual variance is (nearly) 0" in m for m in fit.messages)
    with jax.enable_x64(True):
        dense = jaxlmm.likelihood.dense_profiled_criterion(jnp.asarray([2 * pls.LOG_THETA_MAX]),
                                                           DenseData(jnp.asarray(y), jnp.ones((40, 1)),
                                                                     jnp.asarray(K[None])))
    assert fit.criterion == pytest.approx(float(dense), abs=1e-6)
