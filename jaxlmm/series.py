"""Truncated Taylor series in one variable, for the scan's derivatives in log lambda without nested autodiff.

A :class:`Series` holds a function's value and derivatives at a point, ``(f, f', f'', ...)``, each an array of the
same shape (one entry per model). Arithmetic follows Leibniz's rule, so a computation written with ``+ - * /`` and
:func:`log` (the scan's covariate elimination and profiled criteria, :mod:`jaxlmm.chunk_criteria`) gives the
derivatives of its result when its inputs are series, and plain values when they are arrays:

    (u v)^(n) = sum_k C(n, k) u^(k) v^(n-k)
    (u / v)^(n) = (u^(n) - sum_{k>=1} C(n, k) v^(k) (u/v)^(n-k)) / v
    (log u)' = u' / u

Nested forward-mode differentiation gives the same numbers, but its traced program is about twice as large for
second derivatives; the scan's programs are traced and loaded in every run, so their size is start-up time.
"""

from __future__ import annotations

from math import comb
from typing import NamedTuple

import jax.numpy as jnp


class Series(NamedTuple):
    """``terms[k]``: the k-th derivative (k = 0 the value), arrays of one shape."""

    terms: tuple

    def __add__(self, other):
        other = _as_series(other, len(self.terms))
        return Series(tuple(a + b for a, b in zip(self.terms, other.terms)))

    __radd__ = __add__

    def __neg__(self):
        return Series(tuple(-a for a in self.terms))

    def __sub__(self, other):
        return self + (-_as_series(other, len(self.terms)))

    def __rsub__(self, other):
        return _as_series(other, len(self.terms)) + (-self)

    def __mul__(self, other):
        if not isinstance(other, Series):
            return Series(tuple(a * other for a in self.terms))
        u, v = self.terms, other.terms
        return Series(tuple(sum(comb(n, k) * u[k] * v[n - k] for k in range(n + 1)) for n in range(len(u))))

    __rmul__ = __mul__

    def __truediv__(self, other):
        if not isinstance(other, Series):
            return Series(tuple(a / other for a in self.terms))
        return _divide(self.terms, other.terms)

    def __rtruediv__(self, other):
        return _divide(_as_series(other, len(self.terms)).terms, self.terms)


def _as_series(value, order_plus_one: int) -> Series:
    if isinstance(value, Series):
        return value
    zero = jnp.zeros_like(value) if hasattr(value, "shape") else 0.0
    return Series((value,) + (zero,) * (order_plus_one - 1))


def _divide(u, v) -> Series:
    inverse = 1.0 / v[0]
    q = []
    for n in range(len(u)):
        q.append((u[n] - sum(comb(n, k) * v[k] * q[n - k] for k in range(1, n + 1))) * inverse)
    return Series(tuple(q))


def log(x):
    """log of an array, or of a series: ``(log u, (u'/u), (u'/u)', ...)``."""
    if not isinstance(x, Series):
        return jnp.log(x)
    if len(x.terms) == 1:
        return Series((jnp.log(x.terms[0]),))
    ratio = _divide(x.terms[1:], x.terms[:-1])  # u' / u, one order less
    return Series((jnp.log(x.terms[0]),) + ratio.terms)


def where(condition, a, b):
    """Elementwise choice between two arrays or two series of the same order."""
    if isinstance(a, Series) or isinstance(b, Series):
        order = len(a.terms) if isinstance(a, Series) else len(b.terms)
        a, b = _as_series(a, order), _as_series(b, order)
        return Series(tuple(jnp.where(condition, x, y) for x, y in zip(a.terms, b.terms)))
    return jnp.where(condition, a, b)


def zeros_like(x):
    """Zeros shaped like an array, or a zero series of the same order."""
    if isinstance(x, Series):
        return Series(tuple(jnp.zeros_like(t) for t in x.terms))
    return jnp.zeros_like(x)
