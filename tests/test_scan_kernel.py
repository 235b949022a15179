"""The scan's inner pieces against direct computations: grid derivatives, Hermite starts, the Newton polish and the
CPU block size. End-to-end scan accuracy is tested in test_scan.py, test_gemma.py and test_properties.py."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm import chunk_criteria
from jaxlmm.optimize import minimize_elementwise

scan_module = importlib.import_module("jaxlmm.scan")


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _chunk(m=60, b=7, c=2, seed=0):
    rng = np.random.default_rng(seed)
    shared = jnp.asarray(rng.normal(size=(m, c + 1)))
    return chunk_criteria.chunk_data(jnp.asarray(rng.exponential(size=m)), shared, jnp.asarray(rng.normal(size=(m, b))),
                                     jnp.asarray(np.eye(c + 1) * 5 + 1), jnp.asarray(rng.normal(size=(c + 1, b))),
                                     jnp.asarray(rng.exponential(size=b) + 3), jnp.asarray(m + 10.0))


def test_grid_derivatives_equal_per_variant_derivatives_at_every_grid_point():
    data = _chunk()
    grid = jnp.linspace(-4.0, 4.0, 6)
    on_grid = chunk_criteria.grid_criterion_derivatives(grid, data)
    for method, triple in zip(("REML", "ML"), on_grid):
        for i, t in enumerate(grid):
            direct = chunk_criteria.chunk_criterion_derivatives(jnp.full(data.x.shape[1], t), data, method)
            for grid_value, value in zip(triple, direct):
                np.testing.assert_allclose(grid_value[i], value, rtol=1e-12, atol=1e-10)


def test_grid_gradient_is_the_derivative_of_the_criterion():
    data = _chunk(seed=3)
    t = jnp.asarray([0.3])
    (value, grad, curv), _ = chunk_criteria.grid_criterion_derivatives(t, data)
    h = 1e-4
    f = lambda s: chunk_criteria.chunk_criterion(jnp.full(data.x.shape[1], s), data, "REML")  # noqa: E731
    np.testing.assert_allclose(grad[0], (f(0.3 + h) - f(0.3 - h)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(curv[0], (f(0.3 + h) - 2 * f(0.3) + f(0.3 - h)) / h**2, rtol=1e-4)


def test_hermite_start_recovers_the_minimum_of_a_cubic_and_boundary_optima():
    points = jnp.linspace(-3.0, 3.0, 7)
    minima = jnp.asarray([-2.2, 0.37, 1.9])  # f(t) = (t - t*)^2 (t + 10): a cubic, exact for Hermite
    f = (points[:, None] - minima) ** 2 * (points[:, None] + 10.0)
    df = 2 * (points[:, None] - minima) * (points[:, None] + 10.0) + (points[:, None] - minima) ** 2
    np.testing.assert_allclose(scan_module._hermite_start(points, f, df)[0], minima, atol=1e-12)
    rising, falling = points[:, None] * jnp.ones(2), -points[:, None] * jnp.ones(2)
    start, boundary, value = scan_module._hermite_start(points, jnp.concatenate([rising, falling], 1),
                                                        jnp.concatenate([jnp.ones((7, 2)), -jnp.ones((7, 2))], 1))
    np.testing.assert_array_equal(start, [-3.0, -3.0, 3.0, 3.0])
    np.testing.assert_array_equal(boundary, start)
    np.testing.assert_array_equal(value, [-3.0, -3.0, -3.0, -3.0])


def test_a_boundary_optimum_that_beats_the_refined_interior_one_is_kept():
    """A well around t = -1 and a criterion still falling at the upper end (the ML shape seen at N = 1000, M = 1e5):
    the start is interior; after refinement the end wins where it is lower (shallow well), not otherwise."""
    depths = jnp.asarray([-0.2, -2.0])

    def criterion(t, depth):
        return depth * jnp.exp(-2.0 * (t + 1.0) ** 2) - 0.1 * (t + 3.0)

    points = jnp.linspace(-3.0, 3.0, 13)
    values = jax.vmap(criterion, in_axes=(None, 0), out_axes=1)(points, depths)
    grads = jax.vmap(jax.vmap(jax.grad(criterion), in_axes=(0, None)), in_axes=(None, 0), out_axes=1)(points, depths)
    start, boundary, boundary_value = scan_module._hermite_start(points, values, grads)
    assert bool(jnp.all(start < 0)) and bool(jnp.all(boundary == 3.0))
    np.testing.assert_allclose(boundary_value, -0.6)
    fine = jnp.linspace(-3.0, 0.0, 30001)  # the refined interior minima
    well = jax.vmap(criterion, in_axes=(None, 0), out_axes=1)(fine, depths)
    refined, refined_value = fine[jnp.argmin(well, axis=0)], jnp.min(well, axis=0)
    chosen = scan_module._choose_boundary(refined, refined_value, boundary, boundary_value)
    assert float(chosen[0]) == 3.0 and float(chosen[1]) == float(refined[1])


def test_newton_polish_takes_the_last_short_step_without_evaluating():
    target = jnp.asarray([0.5, -1.2, 2.0])
    objective = lambda t: jnp.cosh(t - target) + 0.1 * (t - target) ** 4  # noqa: E731
    plain = minimize_elementwise(objective, jnp.zeros(3), -5.0, 5.0, max_iter=30)
    polished = minimize_elementwise(objective, jnp.zeros(3), -5.0, 5.0, max_iter=30, polish_xtol=1e-5)
    np.testing.assert_allclose(plain.params, target, atol=1e-9)
    np.testing.assert_allclose(polished.params, target, atol=1e-10)
    assert bool(jnp.all(polished.converged))
    assert int(polished.iterations.max()) < int(plain.iterations.max())


def test_cpu_blocks_keep_a_block_cache_sized():
    sizes = {m: scan_module._fit_block_cpu(m) for m in (100, 499, 1409, 5000)}
    assert sizes == {100: 1024, 499: 256, 1409: 64, 5000: 16}


def test_compact_genotype_types_give_the_float64_results():
    """int8 (no missing) and float32 chunks travel as they are and are widened on the device: same results."""
    from jaxlmm.scan import scan

    rng = np.random.default_rng(5)
    n, m = 120, 70
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, m), size=(n, m))
    kinship = np.corrcoef(rng.normal(size=(n, 300)))
    y = genotypes[:, 3] * 0.4 + rng.normal(size=n)
    reference = scan(y, genotypes.astype(np.float64), kinship=kinship, chunk_size=32).columns
    for compact in (np.int8, np.float32):
        columns = scan(y, genotypes.astype(compact), kinship=kinship, chunk_size=32).columns
        for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "af", "n_miss"):
            np.testing.assert_array_equal(columns[key], reference[key])
        np.testing.assert_array_equal(columns["status"], reference["status"])
