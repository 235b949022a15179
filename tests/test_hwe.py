"""Hardy-Weinberg exact test: hand-computed values, exact enumeration of allele arrangements for small samples,
Wigginton et al.'s published recursion (SNPHWE, transcribed below) for larger ones, and the edge cases."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from jaxlmm.hwe import GenotypeCounts, genotype_counts, hwe_exact, hwe_exact_pvalues


def enumerated_pvalue(hom1, het, hom2) -> Fraction:
    """Exact p-value by enumerating every placement of the allele copies on the 2N chromosomes of N samples:
    under HWE with fixed allele counts all placements are equally likely."""
    n = hom1 + het + hom2
    copies = 2 * hom1 + het
    het_counts = {}
    for placed in itertools.combinations(range(2 * n), copies):
        chosen = set(placed)
        h = sum((2 * i in chosen) != (2 * i + 1 in chosen) for i in range(n))
        het_counts[h] = het_counts.get(h, 0) + 1
    total = sum(het_counts.values())
    probability = {h: Fraction(count, total) for h, count in het_counts.items()}
    return sum(p for p in probability.values() if p <= probability[het])


def snphwe(obs_hets, obs_hom1, obs_hom2) -> float:
    """Wigginton, Cutler & Abecasis (2005) SNPHWE: het-count probabilities by recursion outward from the mode."""
    obs_homc, obs_homr = max(obs_hom1, obs_hom2), min(obs_hom1, obs_hom2)
    rare = 2 * obs_homr + obs_hets
    genotypes = obs_hets + obs_homc + obs_homr
    if rare == 0:
        return 1.0
    probs = [0.0] * (rare + 1)
    mid = rare * (2 * genotypes - rare) // (2 * genotypes)
    if mid % 2 != rare % 2:
        mid += 1
    probs[mid] = 1.0
    hets, homr = mid, (rare - mid) // 2
    homc = genotypes - hets - homr
    while hets > 1:
        probs[hets - 2] = probs[hets] * hets * (hets - 1) / (4.0 * (homr + 1) * (homc + 1))
        hets, homr, homc = hets - 2, homr + 1, homc + 1
    hets, homr = mid, (rare - mid) // 2
    homc = genotypes - hets - homr
    while hets <= rare - 2:
        probs[hets + 2] = probs[hets] * 4.0 * homr * homc / ((hets + 2.0) * (hets + 1.0))
        hets, homr, homc = hets + 2, homr - 1, homc - 1
    total = sum(probs)
    return min(1.0, sum(p for p in probs if p <= probs[obs_hets]) / total)


def _counts(rows):
    hom1, het, hom2 = np.array(rows).T
    return GenotypeCounts(hom1, het, hom2)


def test_hand_computed_values():
    # N = 2, one copy each way: P(h=0) = 1/3, P(h=2) = 2/3; N = 3, three copies: P(h=1) = 0.6, P(h=3) = 0.4
    p = hwe_exact(_counts([(1, 0, 1), (0, 2, 0), (0, 3, 0), (1, 1, 1), (2, 0, 0)]))
    np.testing.assert_allclose(p, [1 / 3, 1.0, 0.4, 1.0, 1.0], rtol=1e-12)


def test_equals_enumeration_for_small_samples():
    rows = [(a, b, c) for a in range(5) for b in range(6) for c in range(5) if 1 <= a + b + c <= 7]
    p = hwe_exact(_counts(rows))
    exact = np.array([float(enumerated_pvalue(*row)) for row in rows])
    np.testing.assert_allclose(p, exact, rtol=1e-10, atol=0)


def test_equals_the_published_recursion(rng):
    n = rng.integers(1, 3000, size=300)
    freq = rng.uniform(0.0, 0.5, size=300)
    # departures from HWE both ways: extra homozygotes or extra heterozygotes
    inbreeding = rng.uniform(-0.5, 0.5, size=300)
    p_hom1 = (1 - freq) ** 2 + inbreeding * freq * (1 - freq)
    p_het = 2 * freq * (1 - freq) * (1 - inbreeding)
    probabilities = np.clip(np.stack([p_hom1, p_het, 1 - p_hom1 - p_het], axis=1), 0, None)
    rows = [tuple(rng.multinomial(k, q / q.sum())) for k, q in zip(n, probabilities)]
    p = hwe_exact(_counts(rows))
    reference = np.array([snphwe(het, hom1, hom2) for hom1, het, hom2 in rows])
    assert reference.min() < 1e-30 and (reference > 0.5).any()  # the draws span the range
    np.testing.assert_allclose(p, reference, rtol=1e-8, atol=0)


def test_monomorphic_missing_and_empty_variants_give_one():
    genotypes = np.array([[2.0, np.nan, 0.0, 1.0], [2.0, np.nan, 0.0, np.nan], [2.0, np.nan, 0.0, np.nan]])
    np.testing.assert_array_equal(hwe_exact_pvalues(genotypes), [1.0, 1.0, 1.0, 1.0])
    assert hwe_exact_pvalues(np.empty((5, 0))).shape == (0,)


def test_dosages_are_rounded_and_missing_calls_skipped(rng):
    calls = rng.binomial(2, 0.3, size=(200, 25)).astype(float)
    calls[:, 3] = np.r_[np.zeros(100), 2 * np.ones(100)]  # no heterozygotes: far from HWE
    missing = rng.random(calls.shape) < 0.1
    noisy = np.where(missing, np.nan, calls + rng.uniform(-0.49, 0.49, size=calls.shape))
    counts = genotype_counts(noisy)
    kept = np.where(missing, np.nan, calls)
    for value, column in zip((2, 1, 0), counts):
        np.testing.assert_array_equal(column, (kept == value).sum(axis=0))
    p = hwe_exact_pvalues(noisy)
    np.testing.assert_allclose(p, [snphwe(het, hom1, hom2) for hom1, het, hom2 in zip(*counts)], rtol=1e-8)
    assert p[3] < 1e-40
    # allele labels swapped (2 - g) give the same test
    np.testing.assert_allclose(hwe_exact_pvalues(2 - noisy), p, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 9])
def test_variant_order_and_batching_do_not_matter(rng, n):
    genotypes = rng.binomial(2, rng.uniform(0, 0.5, size=40), size=(n * 30, 40)).astype(float)
    p = hwe_exact_pvalues(genotypes)
    perm = rng.permutation(40)
    np.testing.assert_array_equal(hwe_exact_pvalues(genotypes[:, perm]), p[perm])
    np.testing.assert_array_equal(np.concatenate([hwe_exact_pvalues(genotypes[:, j:j + 1]) for j in range(40)]), p)
