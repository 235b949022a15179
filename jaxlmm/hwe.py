"""Hardy-Weinberg exact test (Wigginton, Cutler & Abecasis 2005; PLINK's ``--hwe`` without mid-p), per variant.

Given N called samples of which ``n_a`` allele copies are the rarer allele, the number of heterozygotes h under
Hardy-Weinberg equilibrium has the distribution (h of the parity of n_a, 0 <= h <= n_a)

    P(h) = 2^h N! n_a! (2N - n_a)! / (hom_r! h! hom_c! (2N)!),   hom_r = (n_a - h) / 2,  hom_c = N - h - hom_r,

and the p-value of an observed h_obs is the total probability of the counts no more likely than it,
``sum_{h: P(h) <= P(h_obs)} P(h)``. Probabilities within a relative 1e-7 of P(h_obs) count as ties (included):
exactly tied outcomes otherwise split on rounding.

Computation: log P(h) from a table of log-factorials (``math.lgamma``, correct to the last bits), summed over h
for all variants at once. Variants are sorted by their number of possible het counts (n_a // 2 + 1), so step k
touches only the variants that have a k-th count: the work is the sum over variants of n_a / 2, vectorized
across variants. The tail is summed relative to P(h_obs) so p-values down to ~1e-300 keep full precision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

TIE_TOLERANCE = 1e-7


class GenotypeCounts(NamedTuple):
    """(b,) integer counts per variant of the two homozygotes and the heterozygote among called samples."""

    hom1: np.ndarray
    het: np.ndarray
    hom2: np.ndarray


def genotype_counts(genotypes) -> GenotypeCounts:
    """Counts of hard calls in an (n, b) chunk of allele counts: values are rounded half up (dosages become
    hard calls); NaN, and values that round outside 0..2, are not counted."""
    calls = np.floor(np.asarray(genotypes, dtype=float) + 0.5)
    return GenotypeCounts(*((calls == value).sum(axis=0).astype(np.int64) for value in (2.0, 1.0, 0.0)))


def log_factorials(limit: int) -> np.ndarray:
    """(limit + 1,) log k! for k = 0..limit."""
    return np.array([math.lgamma(k + 1.0) for k in range(limit + 1)])


def hwe_exact(counts: GenotypeCounts) -> np.ndarray:
    """(b,) Hardy-Weinberg exact p-values of genotype counts (see module docstring); 1 for variants with no
    called sample or no copy of one allele."""
    hom1, het, hom2 = (np.asarray(c, dtype=np.int64).reshape(-1) for c in counts)
    n = hom1 + het + hom2
    rare = np.minimum(2 * hom1, 2 * hom2) + het  # copies of the rarer allele
    b = n.shape[0]
    if b == 0:
        return np.empty(0)
    log_fact = log_factorials(int(2 * n.max()))
    constant = log_fact[n] + log_fact[rare] + log_fact[2 * n - rare] - log_fact[2 * n]

    def log_probability(h, rare, n, constant):
        hom_r = (rare - h) // 2
        return h * math.log(2.0) + constant - log_fact[hom_r] - log_fact[h] - log_fact[n - h - hom_r]

    order = np.argsort(-(rare // 2), kind="stable")  # most het counts first: active variants are a prefix
    rare, n, constant = rare[order], n[order], constant[order]
    log_observed = log_probability(het[order], rare, n, constant)
    steps = rare // 2 + 1  # possible het counts: rare % 2, rare % 2 + 2, ..., rare
    active_count = np.searchsorted(-steps, -np.arange(int(steps[0])), side="left")  # steps sorted descending
    total, tail = np.zeros(b), np.zeros(b)
    threshold = log_observed + math.log1p(TIE_TOLERANCE)
    for k, a in enumerate(active_count):
        h = rare[:a] % 2 + 2 * k
        log_p = log_probability(h, rare[:a], n[:a], constant[:a])
        total[:a] += np.exp(log_p)
        tail[:a] += np.where(log_p <= threshold[:a], np.exp(np.minimum(log_p - log_observed[:a], 0.0)), 0.0)
    p = np.empty(b)
    p[order] = np.minimum(np.exp(log_observed + np.log(tail)) / total, 1.0)
    return p


def hwe_exact_pvalues(genotypes) -> np.ndarray:
    """(b,) Hardy-Weinberg exact p-values of an (n, b) chunk of allele counts (0/1/2, NaN missing; dosages are
    rounded to hard calls, see :func:`genotype_counts`)."""
    return hwe_exact(genotype_counts(genotypes))
