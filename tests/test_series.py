"""jaxlmm.series: truncated Taylor series arithmetic against nested forward-mode derivatives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm import series


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _derivatives(f, t, order):
    """(f, f', ..., f^(order)) at t by nested jvp."""
    ones = jnp.ones_like(t)

    def nested(s, k):
        if k == 0:
            return (f(s),)
        primal, tangent = jax.jvp(lambda r: nested(r, k - 1), (s,), (ones,))
        return primal + (tangent[-1],)

    return nested(t, order)


def _composite(u, v, flag):
    """Every operation the scan's criteria use: + - * / with arrays and scalars, log, where, zeros_like."""
    w = 3.0 - u * v / (2.0 + v) + series.log(u / 5.0) * 2.0
    return series.where(flag, w - 1.0 / v, series.zeros_like(w) + v - u) + 0.5 * series.log(v * v)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_series_arithmetic_gives_the_derivatives_of_nested_autodiff(order):
    t = jnp.linspace(0.2, 2.0, 7)
    flag = jnp.arange(7) % 2 == 0
    u_of, v_of = (lambda s: jnp.exp(s) + s * s), (lambda s: 1.0 + jnp.sin(s) ** 2)  # noqa: E731
    expected = _derivatives(lambda s: _composite(u_of(s), v_of(s), flag), t, order)
    u = series.Series(_derivatives(u_of, t, order))
    v = series.Series(_derivatives(v_of, t, order))
    got = _composite(u, v, flag)
    assert len(got.terms) == order + 1
    for a, b in zip(got.terms, expected):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_plain_arrays_pass_through_unchanged():
    u, v = jnp.asarray([1.5, 2.0]), jnp.asarray([0.5, 3.0])
    flag = jnp.asarray([True, False])
    w = 3.0 - u * v / (2.0 + v) + jnp.log(u / 5.0) * 2.0
    np.testing.assert_allclose(_composite(u, v, flag),
                               jnp.where(flag, w - 1.0 / v, v - u) + 0.5 * jnp.log(v * v), rtol=1e-15)
