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
            direct = chunk_criteria.chunk_criterion_expansion(jnp.full(data.x.shape[1], t), data, method)[:3]
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


def _with_derivatives(f, points, columns):
    """values, gradients and curvatures (G, B) of f(t, column) on points (G,) for each column."""
    on = lambda g: jax.vmap(jax.vmap(g, in_axes=(0, None)), in_axes=(None, 0), out_axes=1)(points, columns)  # noqa
    return on(f), on(jax.grad(f)), on(jax.grad(jax.grad(f)))


def test_hermite_start_recovers_the_minimum_of_a_quintic_and_boundary_optima():
    points = jnp.linspace(-3.0, 3.0, 7)
    minima = jnp.asarray([-2.2, 0.37, 1.9])
    quintic = lambda t, m: (t - m) ** 2 * (t + 10.0) * (t * t + 5.0)  # noqa: E731  exact for quintic Hermite
    start, _, _, interior = scan_module._hermite_start(points, *_with_derivatives(quintic, points, minima))
    np.testing.assert_allclose(start, minima, atol=1e-12)
    np.testing.assert_allclose(interior, 0.0, atol=1e-9)  # the quintic's value at its minimum
    rising, falling = points[:, None] * jnp.ones(2), -points[:, None] * jnp.ones(2)
    start, boundary, value, interior = scan_module._hermite_start(
        points, jnp.concatenate([rising, falling], 1), jnp.concatenate([jnp.ones((7, 2)), -jnp.ones((7, 2))], 1),
        jnp.zeros((7, 4)))
    np.testing.assert_array_equal(start, [-3.0, -3.0, 3.0, 3.0])
    np.testing.assert_array_equal(boundary, start)
    np.testing.assert_array_equal(value, [-3.0, -3.0, -3.0, -3.0])
    np.testing.assert_array_equal(interior, [np.inf] * 4)  # no interior candidate: the boundary is certain
    np.testing.assert_array_equal(scan_module._boundary_certain(value, interior), [True] * 4)


def test_the_hermite_start_is_computed_once_in_the_chunk_program():
    """Its outputs are what it computed (NaN from a non-finite grid), and each of its operations appears a few
    times in the compiled program, not once in every Newton fusion that reads the start (XLA copied the ~135
    operations into ~130 fusions: a quarter of the program, which every run loads)."""
    points = jnp.linspace(-3.0, 3.0, 7)
    values = (points[:, None] - jnp.asarray([-1.0, 0.5])) ** 2
    hermite = scan_module._hermite_start(points, values, 2 * (points[:, None] - jnp.asarray([-1.0, 0.5])),
                                         2 * jnp.ones((7, 2)))
    for got, want in zip(scan_module._computed_once(hermite, jnp.asarray(True)), hermite):
        np.testing.assert_array_equal(got, want)
    assert all(np.isnan(v).all() for v in scan_module._computed_once(hermite, jnp.asarray(False)))
    rng = np.random.default_rng(1)
    n = 40
    background = rng.binomial(2, 0.3, size=(n, 200)).astype(float)
    centred = background - background.mean(axis=0)
    prepared = scan_module.prepare_scan(rng.normal(size=n), kinship=centred @ centred.T / 200, chunk_size=16)
    fit, width = prepared.fit_chunk, prepared.width
    program = fit.func.lower(*fit.args, np.zeros((n, width), np.int8), np.zeros(width), np.zeros(width, bool),
                             **fit.keywords).compile().as_text()
    assert program.count("/hermite_start/") < 1500  # 944 now; 5,140 when copied into the Newton fusions


def test_quintic_start_is_within_the_polish_threshold_on_a_smooth_criterion():
    """On a logistic-shaped criterion (the shape of the scan's criteria in log lambda) and the scan's grid spacing,
    the quintic start is within 1e-3 of the minimum (the Halley polish threshold)."""
    points = jnp.linspace(-11.5, 11.5, 16)
    centres = jnp.linspace(-9.0, 9.0, 25)
    criterion = lambda t, m: jnp.log1p(jnp.exp(t - m)) - 0.5 * (t - m) + 0.02 * (t - m) ** 2  # noqa: E731
    fine = jnp.linspace(-11.5, 11.5, 2_300_001)
    truth = fine[jnp.argmin(jax.vmap(criterion, in_axes=(None, 0), out_axes=1)(fine, centres), axis=0)]
    start = scan_module._hermite_start(points, *_with_derivatives(criterion, points, centres))[0]
    assert float(jnp.max(jnp.abs(start - truth))) < 1e-3


def test_a_boundary_optimum_that_beats_the_refined_interior_one_is_kept():
    """A well around t = -1 and a criterion still falling at the upper end (the ML shape seen at N = 1000, M = 1e5):
    the start is interior; after refinement the end wins where it is lower (shallow well), not otherwise."""
    depths = jnp.asarray([-0.2, -2.0])

    def criterion(t, depth):
        return depth * jnp.exp(-2.0 * (t + 1.0) ** 2) - 0.1 * (t + 3.0)

    points = jnp.linspace(-3.0, 3.0, 13)
    start, boundary, boundary_value, interior = scan_module._hermite_start(
        points, *_with_derivatives(criterion, points, depths))
    assert bool(jnp.all(start < 0)) and bool(jnp.all(boundary == 3.0))
    np.testing.assert_allclose(boundary_value, -0.6)
    fine = jnp.linspace(-3.0, 0.0, 30001)  # the refined interior minima
    well = jax.vmap(criterion, in_axes=(None, 0), out_axes=1)(fine, depths)
    refined_value = jnp.min(well, axis=0)
    np.testing.assert_array_equal(scan_module._choose_boundary(boundary_value, refined_value), [True, False])
    np.testing.assert_allclose(interior, refined_value, atol=1e-3)  # interpolated on a coarse grid
    # the shallow well loses to the end by ~0.2 > BOUNDARY_MARGIN: decided on the grid; the deep one wins
    np.testing.assert_array_equal(scan_module._boundary_certain(boundary_value, interior), [True, False])
    np.testing.assert_array_equal(scan_module._boundary_certain(boundary_value, refined_value - 0.15), [False, False])


def test_expansion_carries_the_statistics_over_a_short_step():
    """chunk_criterion_expansion: value, gradient and curvature as nested autodiff of the criterion; statistics
    carried over a step of 1e-4 (the Newton polish takes at most 1e-5) equal direct ones at the shifted point."""
    data = _chunk(seed=4)
    t = jnp.linspace(-2.0, 2.0, data.x.shape[1])
    lanes = jnp.arange(data.x.shape[1]) % 2 == 0
    value, grad, curv, parts = chunk_criteria.chunk_criterion_expansion(t, data, lanes)
    f = lambda s: jnp.where(lanes, chunk_criteria.chunk_criterion(s, data, "REML"),  # noqa: E731
                            chunk_criteria.chunk_criterion(s, data, "ML"))
    ones = jnp.ones_like(t)
    (direct_value, direct_grad), (_, direct_curv) = jax.jvp(lambda s: jax.jvp(f, (s,), (ones,)), (t,), (ones,))
    for a, b in zip((value, grad, curv), (direct_value, direct_grad, direct_curv)):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
    step = jnp.where(lanes, 1e-4, -1e-4)
    carried = chunk_criteria.extrapolated(parts, step, data.shared.shape[0] - 1)
    for a, b in zip(carried, chunk_criteria.projected(jnp.exp(t + step), data)):
        np.testing.assert_allclose(a, b, rtol=1e-11)


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
    assert sizes == {100: 512, 499: 128, 1409: 64, 5000: 16}


def test_compact_genotype_types_give_the_float64_results():
    """int8 and float32 chunks travel as they are and are widened on the device: same results; in integer chunks a
    negative number is a missing value (PLINK counts: -1), as NaN in float chunks."""
    from jaxlmm.scan import scan

    rng = np.random.default_rng(5)
    n, m = 120, 70
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, m), size=(n, m)).astype(float)
    genotypes[rng.uniform(size=(n, m)) < 0.01] = np.nan
    kinship = np.corrcoef(rng.normal(size=(n, 300)))
    y = genotypes[:, 3] * 0.4 + rng.normal(size=n)
    y = np.where(np.isnan(y), 0.0, y)
    reference = scan(y, genotypes, kinship=kinship, chunk_size=32).columns
    assert reference["n_miss"].sum() > 0
    for compact in (np.int8, np.float32):
        chunk = np.where(np.isnan(genotypes), -1, genotypes).astype(np.int8) if compact == np.int8 else genotypes
        columns = scan(y, chunk.astype(compact), kinship=kinship, chunk_size=32).columns
        for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "af", "n_miss"):
            np.testing.assert_array_equal(columns[key], reference[key])
        np.testing.assert_array_equal(columns["status"], reference["status"])


def _separable_objective(seed, slow):
    """derivatives(t, index) -> value, gradient, curvature of 40 one-dimensional problems (those listed: index), the
    ``slow`` ones (40,) bool flat enough to take many Newton steps."""
    target = jnp.asarray(np.random.default_rng(seed).uniform(-2.0, 2.0, 40))
    steepness = jnp.asarray(np.where(slow, 0.05, 1.0))

    def derivatives_of(t, index):
        f = lambda s: jnp.cosh((s - target[index]) * steepness[index]) + 0.1 * (s - target[index]) ** 4  # noqa: E731
        ones = jnp.ones_like(t)
        (v, g), (_, h) = jax.jvp(lambda s: jax.jvp(f, (s,), (ones,)), (t,), (ones,))
        return v, g, h

    return derivatives_of


def test_gathered_stragglers_follow_the_same_iterates_as_the_whole_batch():
    """With lane_derivatives, every evaluation after the first is of at most 8 elements still going (gathered);
    every element's iterates, iteration count and result are the same as with whole-batch evaluations."""
    derivatives_of = _separable_objective(seed=2, slow=np.arange(40) < 5)  # five slow elements
    everything = jnp.arange(40)
    whole = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0, max_iter=40,
                                 derivatives=lambda t: derivatives_of(t, everything))
    calls, ran = [], []

    def counted(t, index):
        calls.append(t.shape[0])
        jax.debug.callback(lambda: ran.append(1))
        return derivatives_of(t, index)

    gathered = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0, max_iter=40,
                                    derivatives=lambda t: derivatives_of(t, everything), lane_derivatives=counted,
                                    compact_lanes=8)
    assert calls == [8]  # traced once, for 8 lanes
    assert len(ran) > 0  # and run
    for a, b in zip(whole[:6], gathered[:6]):
        np.testing.assert_array_equal(a, b)
    assert int(whole.iterations[:5].min()) > int(whole.iterations[5:].max())  # the slow ones did go on alone


def test_skipped_elements_are_never_evaluated_and_the_others_follow_the_same_iterates():
    """skip: those elements are not fitted (start, value inf, gradient NaN, not converged, no iterations) and, past
    the first_lanes leading ones, not evaluated; first_lanes smaller than the elements to fit: the rest get their
    first evaluation in the gathered loop. Every other element's iterates and result equal whole-batch evaluations
    without skipping, also with settled."""
    derivatives_of = _separable_objective(seed=5, slow=np.arange(40) % 7 == 0)
    skip = jnp.asarray(np.arange(40) % 3 == 1)
    everything = jnp.arange(40)
    settled = lambda value, grad, curv, index: index == 6  # noqa: E731
    evaluated = []

    def counted(t, index):
        jax.debug.callback(lambda i: evaluated.extend(np.asarray(i).tolist()), index)
        return derivatives_of(t, index)

    options = dict(max_iter=40, derivatives=lambda t: derivatives_of(t, everything), settled=settled)
    whole = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0, **options)
    for first_lanes in (8, 40):
        evaluated.clear()
        result = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0,
                                      lane_derivatives=counted, compact_lanes=8, skip=skip, first_lanes=first_lanes,
                                      **options)
        assert not (set(np.flatnonzero(skip)) - set(range(first_lanes))) & set(evaluated)  # the first are sliced
        kept = ~np.asarray(skip)
        for a, b in zip(whole[:6], result[:6]):
            np.testing.assert_array_equal(np.asarray(a)[kept], np.asarray(b)[kept])
        np.testing.assert_array_equal(result.params[skip], 0.0)
        np.testing.assert_array_equal(result.value[skip], np.inf)
        assert bool(jnp.all(jnp.isnan(result.gradient[skip]))) and not bool(jnp.any(result.converged[skip]))
        np.testing.assert_array_equal(result.iterations[skip], 0)
        assert int(result.iterations[6]) == 0 and not bool(result.converged[6])  # settled at its first evaluation
    ungathered = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0, skip=skip,
                                      **options)
    for a, b in zip(result[:6], ungathered[:6]):
        np.testing.assert_array_equal(a, b)
    # aux: zeros for the skipped elements on every path, the last accepted point's value for the others
    with_aux = lambda t, index: (*derivatives_of(t, index), t + 1.0)  # noqa: E731
    for path in (dict(derivatives=lambda t: with_aux(t, everything)),
                 dict(derivatives=lambda t: with_aux(t, everything), lane_derivatives=with_aux, compact_lanes=8),
                 dict(lane_derivatives=with_aux, compact_lanes=8, first_lanes=8)):
        objective = None if "derivatives" not in path else (lambda t: derivatives_of(t, everything)[0])
        result = minimize_elementwise(objective, jnp.zeros(40), -5.0, 5.0, max_iter=40, skip=skip, has_aux=True,
                                      settled=settled, **path)
        np.testing.assert_array_equal(result.aux[skip], 0.0)
        np.testing.assert_array_equal(result.aux[kept], result.params[kept] - result.polish[kept] + 1.0)
        np.testing.assert_array_equal(result.params, ungathered.params)


def test_first_evaluations_slice_the_batch_where_enough_elements_need_fitting():
    """first_lanes=8 over 40 elements: the first slice is always evaluated as it lies; a later slice only when more
    than compact_lanes of its elements need fitting (then its skipped ones are evaluated and dropped); the others'
    elements are gathered, their skipped ones never evaluated. Results equal whole-batch evaluations."""
    derivatives_of = _separable_objective(seed=7, slow=np.arange(40) % 9 == 0)
    skip = np.zeros(40, bool)
    skip[8:16] = True  # nothing to fit: not evaluated
    skip[[17, 20]] = True  # 6 of 8 to fit: sliced
    skip[24:29] = True  # 3 of 8 to fit: gathered
    everything = jnp.arange(40)
    evaluations = []  # (sliced, lanes) per evaluation run

    def counted(t, index):
        sliced = isinstance(index, np.ndarray)
        jax.debug.callback(lambda i: evaluations.append((sliced, np.asarray(i).tolist())), index)
        return derivatives_of(t, index)

    options = dict(max_iter=40, derivatives=lambda t: derivatives_of(t, everything))
    whole = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0, **options)
    result = minimize_elementwise(lambda t: derivatives_of(t, everything)[0], jnp.zeros(40), -5.0, 5.0,
                                  lane_derivatives=counted, compact_lanes=4, skip=jnp.asarray(skip), first_lanes=8,
                                  max_iter=40)
    sliced = [lanes for was_sliced, lanes in evaluations if was_sliced]
    assert sliced == [list(range(0, 8)), list(range(16, 24)), list(range(32, 40))]
    gathered = {lane for was_sliced, lanes in evaluations if not was_sliced for lane in lanes}
    assert {29, 30, 31} <= gathered and not gathered & set(np.flatnonzero(skip))
    for a, b in zip(whole[:6], result[:6]):
        np.testing.assert_array_equal(np.asarray(a)[~skip], np.asarray(b)[~skip])


def test_a_boundary_that_certainly_wins_settles_the_fit_and_a_near_tie_does_not():
    """_boundary_wins: decided from the first evaluation when the boundary beats twice the predicted decrease;
    a near tie (within the cubic term's reach), a long step or negative curvature leave the fit to Newton."""
    value, curv = jnp.full(5, 10.0), jnp.asarray([2.0, 2.0, 2.0, 2.0, -1.0])
    grad = jnp.asarray([2e-4, 2e-4, 1e-2, 2e-4, 2e-4])  # steps 1e-4, 1e-4, 5e-3 (too long), 1e-4, -
    boundary = jnp.asarray([9.99, 10.0 - 3e-8, 9.0, 10.0 - 1e-8 - 2e-8, 9.0])
    settled = scan_module._boundary_wins(boundary, value, grad, curv)
    np.testing.assert_array_equal(settled, [True, False, False, False, False])


def test_settled_elements_stop_after_the_first_evaluation():
    target = jnp.asarray([0.5, -1.2, 2.0])
    objective = lambda t: jnp.cosh(t - target)  # noqa: E731
    result = minimize_elementwise(objective, jnp.zeros(3), -5.0, 5.0, max_iter=30,
                                  settled=lambda value, grad, curv, index: jnp.asarray([False, True, False])[index])
    np.testing.assert_array_equal(result.iterations == 0, [False, True, False])
    np.testing.assert_array_equal(result.converged, [True, False, True])
    assert float(result.params[1]) == 0.0


def test_search_grid_is_dense_near_the_null_model_and_ends_most_fits_at_their_first_evaluation():
    """Points at +- NEAR_NULL_OFFSETS around the null model's log lambdas (clipped to the interval, ascending), so
    variants that explain little, most of a scan, start within the polish threshold and need no Newton step."""
    lo, hi = scan_module.LOG_LAMBDA_BOUNDS
    grid = scan_module._search_grid(jnp.asarray(-0.35), jnp.asarray(hi))
    assert bool(jnp.all(jnp.diff(grid) >= 0)) and float(grid[0]) == lo and float(grid[-1]) == hi
    for offset in (0.0, *scan_module.NEAR_NULL_OFFSETS, *(-d for d in scan_module.NEAR_NULL_OFFSETS)):
        assert float(jnp.min(jnp.abs(grid - (-0.35 + offset)))) < 1e-12
    rng = np.random.default_rng(3)
    n, m = 400, 300
    relatives = rng.binomial(2, 0.3, size=(n, 2000)).astype(float)
    relatives -= relatives.mean(axis=0)
    kinship = relatives @ relatives.T / 2000
    y = rng.multivariate_normal(np.zeros(n), 0.6 * kinship + 0.4 * np.eye(n))
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, m), size=(n, m)).astype(float)
    iterations = scan_module.scan(y, genotypes, kinship=kinship).columns["iterations"]
    assert np.mean(iterations == 0) > 0.95


def test_host_p_values_match_the_jax_reference_distributions_far_into_the_tail():
    """The scan's host p-values (scipy: fdtrc, erfc) against :mod:`jaxlmm.pvalues` (JAX) and scipy's incomplete
    gamma chi-square tail, for statistics from 0 to 1,400 (p down to ~1e-305); negative statistics count as 0."""
    from scipy.special import chdtrc

    from jaxlmm.pvalues import chi2_1_sf, f1_sf

    statistic = np.concatenate([[-1.0, 0.0], np.logspace(-8, np.log10(1400.0), 400)])
    host = scan_module._p_values({"wald": statistic, "lrt": statistic, "score": statistic}, 498)
    with jax.enable_x64(True):
        chi2, f1 = np.asarray(chi2_1_sf(jnp.asarray(statistic))), np.asarray(f1_sf(jnp.asarray(statistic), 498.0))
    np.testing.assert_allclose(host["p_lrt"], chi2, rtol=1e-12)
    np.testing.assert_allclose(host["p_lrt"], chdtrc(1.0, np.maximum(statistic, 0.0)), rtol=1e-12)
    np.testing.assert_allclose(host["p_wald"], f1, rtol=1e-9)  # JAX's betainc: ~1e-10 relative
    np.testing.assert_array_equal(host["p_wald"], host["p_score"])
    assert host["p_lrt"][0] == host["p_lrt"][1] == 1.0 and 0.0 < host["p_lrt"][-1] < 1e-300


def test_select_variants_slices_a_run_and_gathers_any_other_list():
    """A run of consecutive variants (sliced) and any other list (gathered) select the same columns as indexing."""
    data = _chunk(b=9, seed=6)
    for index in ([2, 3, 4, 5], [0, 1, 2, 3], [5, 6, 7, 8], [1, 3, 4, 5], [8, 8, 8, 8], [4, 5, 0, 1], list(range(9)),
                  list(np.arange(12) % 9)):
        for given in (np.asarray(index), jnp.asarray(index)):  # numpy: known when tracing (a run is sliced)
            selected = jax.jit(lambda d: chunk_criteria.select_variants(d, given))(data)
            np.testing.assert_array_equal(selected.x, data.x[:, np.asarray(index)])
            np.testing.assert_array_equal(selected.null_x_shared, data.null_x_shared[:, np.asarray(index)])
            np.testing.assert_array_equal(selected.null_xx, data.null_xx[np.asarray(index)])
