import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
    """Run a test with float64 enabled in scope (jaxlmm never flips the global flag)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


def random_problem(rng, n=40, p=3, n_groups=7, kinship=False):
    """A small random mixed-model problem: y (n,), X (n, p) with intercept, group labels, a PSD kernel."""
    X = np.c_[np.ones(n), rng.normal(size=(n, p - 1))]
    groups = rng.integers(0, n_groups, size=n)
    W = rng.normal(size=(n, 2 * n))
    K = W @ W.T / (2 * n)
    u = rng.normal(size=n_groups)
    y = X @ rng.normal(size=p) + u[groups] + rng.normal(size=n)
    if kinship:
        y = y + np.linalg.cholesky(K + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    return y, X, groups, K
