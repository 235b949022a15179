"""Hardy-Weinberg exact test (Wigginton, Cutler & Abecasis 2005; PLINK's ``--hwe`` without mid-p), per variant.

Given N called samples of which ``n_a`` allele copies are the rarer allele, the number of heterozygotes h under
Hardy-Weinberg equilibrium has the distribution (h of the parity of n_a, 0 <= h <= n_a)

    P(h) = 2^h N! n_a! (2N - n_a)! / (hom_r! h! hom_c! (2N)!),   hom_r = (n_a - h) / 2,  hom_c = N - h - hom_r,

and the p-value of an observed h_obs is the total probability of the counts no more likely than it,
``sum_{h: P(h) <= P(h_obs)} P(h)``. Probabilities within a relative 1e-7 of P(h_obs) count as ties (included):
exactly tied outcomes otherwise split on rounding.

Computation: log P(h) from a table of log-factorials (``math.lgamma``, correct to the last bits), summed over h
for all variants at once. Only het counts with P(h) >= P(h_obs) e^-40 are summed (P is log-concave in h, so they
form an interval around h_obs and the mode, found by bisection); the rest change p by less than 1e-13 relative.
Variants are sorted by the length of that interval, so step k touches only the variants that have a k-th count:
the work is the total interval length (about 9 standard deviations of the het count per variant whose h_obs is
near the mode), vectorized across variants. The tail is summed relative to P(h_obs), so p-values down to
~1e-300 keep full precision.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

TIE_TOLERANCE = 1e-7
NEGLIGIBLE = 40.0  # in nats below P(h_obs): het counts this much less likely than the observed one are skipped


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


def _bisect(predicate, low: np.ndarray, high: np.ndarray, rightmost: bool) -> np.ndarray:
    """Elementwise bisection over integers low..high where ``predicate`` (of an index array) is monotone: the
    first index where it holds (it holds at ``high``), or with ``rightmost`` the last (it holds at ``low``)."""
    low, high = low.copy(), high.copy()
    while np.any(low < high):
        middle = (low + high + rightmost) // 2
        holds = predicate(middle)
        if rightmost:
            low, high = np.where(holds, middle, low), np.where(holds, high, middle - 1)
        else:
            low, high = np.where(holds, low, middle + 1), np.where(holds, middle, high)
    return low


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

    # sum only over the het counts with log P >= log P(h_obs) - NEGLIGIBLE: an interval around h_obs (P is
    # log-concave in h), found by bisection on each side; the terms left out change p by < 1e-13 relative
    parity, last = rare % 2, rare // 2  # het counts parity + 2k, k = 0..last
    k_obs = (het - parity) // 2
    log_observed = log_probability(het, rare, n, constant)

    def inside(k):
        return log_probability(parity + 2 * k, rare, n, constant) >= log_observed - NEGLIGIBLE

    first = _bisect(inside, np.zeros(b, dtype=np.int64), k_obs, rightmost=False)
    steps = _bisect(inside, k_obs, last, rightmost=True) - first + 1
    order = np.argsort(-steps, kind="stable")  # most steps first: the variants still active are a prefix
    rare, n, constant, log_observed = rare[order], n[order], constant[order], log_observed[order]
    start = parity[order] + 2 * first[order]
    active_count = np.searchsorted(-steps[order], -np.arange(int(steps.max())), side="left")
    total, tail = np.zeros(b), np.zeros(b)
    threshold = log_observed + math.log1p(TIE_TOLERANCE)
    for k, a in enumerate(active_count):
        log_p = log_probability(start[:a] + 2 * k, rare[:a], n[:a], constant[:a])
        total[:a] += np.exp(log_p)
        tail[:a] += np.where(log_p <= threshold[:a], np.exp(np.minimum(log_p - log_observed[:a], 0.0)), 0.0)
    p = np.empty(b)
    p[order] = np.minimum(np.exp(log_observed + np.log(tail)) / total, 1.0)
    return p


def hwe_exact_pvalues(genotypes) -> np.ndarray:
    """(b,) Hardy-Weinberg exact p-values of an (n, b) chunk of allele counts (0/1/2, NaN missing; dosages are
    rounded to hard calls, see :func:`genotype_counts`)."""
    return hwe_exact(genotype_counts(genotypes))
