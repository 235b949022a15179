"""Small datasets shipped with jaxlmm: the seed example (5 individuals, 3 variants, 2 families)."""

from __future__ import annotations

import numpy as np

SEED_GENOTYPES = (
    ("CC", "CT", "AT"),
    ("TT", "TT", "AA"),
    ("CT", "CT", "AA"),
    ("CC", "TT", "AA"),
    ("CC", "CC", "TT"),
)
SEED_ALT_ALLELES = ("T", "C", "T")
SEED_HEIGHT_CM = (180.0, 160.0, 158.0, 155.0, 193.0)
SEED_FAMILY = (1, 1, 1, 2, 2)


def _scale(a: np.ndarray) -> np.ndarray:
    """R's ``scale``: centre by the mean, divide by the sd with the n - 1 denominator (column-wise)."""
    return (a - a.mean(axis=0)) / a.std(axis=0, ddof=1)


def seed_data() -> dict:
    """The seed's ``genetic_data`` table as columns: height, family, individual, variant1..variant3 (all scaled).

    Genotypes count the alternative allele (additive coding) and are standardized, as is height.
    """
    counts = np.array(
        [[genotype.count(alt) for genotype, alt in zip(row, SEED_ALT_ALLELES)] for row in SEED_GENOTYPES], dtype=float
    )
    variants = _scale(counts)
    table = {
        "height": _scale(np.array(SEED_HEIGHT_CM)),
        "family": np.array(SEED_FAMILY),
        "individual": np.arange(1, len(SEED_FAMILY) + 1),
    }
    for j in range(variants.shape[1]):
        table[f"variant{j + 1}"] = variants[:, j]
    return table
