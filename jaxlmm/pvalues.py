"""Reference distributions for the association tests, in JAX (float64 accurate far into the tail)."""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import betainc, erfc


def f1_sf(statistic, df):
    """Survival function of F(1, df) at ``statistic`` (two-sided t test with df degrees of freedom)."""
    statistic = jnp.maximum(statistic, 0.0)
    return betainc(0.5 * df, 0.5, df / (df + statistic))


def chi2_1_sf(statistic):
    """Survival function of the chi-square distribution with 1 degree of freedom."""
    return erfc(jnp.sqrt(0.5 * jnp.maximum(statistic, 0.0)))
