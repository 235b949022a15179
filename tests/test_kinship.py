"""jaxlmm.kinship against the dense textbook formula (numpy float64), on both of its paths."""

import numpy as np
import pytest

from jaxlmm import kinship


def _dense(genotypes, standardize=False):
    imputed = np.where(np.isnan(genotypes), np.nanmean(genotypes, axis=0), genotypes)
    centred = imputed - imputed.mean(axis=0)
    if standardize:
        sd = centred.std(axis=0)
        centred = centred / np.where(sd > 0, sd, 1.0)
    return centred @ centred.T / genotypes.shape[1]


@pytest.mark.parametrize("standardize", [False, True])
def test_relatedness_equals_the_dense_formula_on_both_paths(standardize, monkeypatch):
    """Integer counts without missing values go through the exact float32 product (centred kinship); columns with
    a missing value, a dosage or a value beyond INTEGER_LIMIT through float64. Chunks of 700 mix both (and pad)."""
    rng = np.random.default_rng(5)
    n, m = 90, 2000
    genotypes = rng.binomial(2, rng.uniform(0.05, 0.5, m), size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.002] = np.nan
    genotypes[:, 10] = rng.uniform(0, 2, n)  # dosages
    genotypes[:, 11] *= 40.0  # integers beyond the limit
    calls = {"float32": 0, "float64": 0}
    exact, general = kinship._integer_chunk_contribution, kinship._chunk_contribution

    def counted(name, function):
        def call(*args):
            calls[name] += 1
            return function(*args)
        return call

    monkeypatch.setattr(kinship, "_integer_chunk_contribution", counted("float32", exact))
    monkeypatch.setattr(kinship, "_chunk_contribution", counted("float64", general))
    got = kinship.relatedness(genotypes, standardize=standardize, chunk_size=700)
    np.testing.assert_allclose(got, _dense(genotypes, standardize), rtol=1e-12, atol=1e-13)
    assert calls == ({"float32": 0, "float64": 3} if standardize else {"float32": 3, "float64": 3})


def test_integer_chunk_contribution_is_exact_at_its_limits():
    """Every entry of X X' at the largest values and chunk width allowed is an integer below 2^24: the float32
    product returns it exactly."""
    import jax

    rng = np.random.default_rng(6)
    chunk = rng.integers(-kinship.INTEGER_LIMIT, kinship.INTEGER_LIMIT + 1, size=(40, kinship.INTEGER_COLUMNS)).astype(float)
    with jax.enable_x64(True):
        got = np.asarray(kinship._integer_chunk_contribution(chunk))
    centred = chunk - chunk.mean(axis=0)
    np.testing.assert_allclose(got, centred @ centred.T, rtol=1e-13, atol=1e-9)


@pytest.mark.parametrize("rows_per_block", [7, 16, 640])
def test_symmetric_product_is_exact_for_any_number_of_blocks(rows_per_block, monkeypatch):
    """x x' from the blocks on and below the diagonal (1 to SYMMETRIC_BLOCKS row blocks, uneven sizes) equals
    the whole product exactly for integer x."""
    import jax

    monkeypatch.setattr(kinship, "SYMMETRIC_BLOCK_ROWS", rows_per_block)
    x = np.random.default_rng(7).integers(-3, 4, size=(53, 300)).astype(np.float32)
    with jax.enable_x64(True):
        got = np.asarray(kinship._symmetric_product(x))
    np.testing.assert_array_equal(got, (x.astype(float) @ x.T.astype(float)).astype(np.float32))


class _CountsReader:
    """A genotype reader with PLINK's int8 ``counts`` (-1 missing) beside its float view (NaN missing)."""

    def __init__(self, genotypes):
        self.genotypes, self.shape = genotypes, genotypes.shape

    def __getitem__(self, index):
        return self.genotypes[index]

    def counts(self, index):
        rows, cols = index
        values = self.genotypes[rows][:, cols]
        return np.where(np.isnan(values), -1, values).astype(np.int8)


def test_int8_counts_give_the_kinship_and_filters_of_the_float_genotypes():
    """Readers with ``counts`` are read as int8 (complete columns straight to the float32 product, the others
    converted to float64 with NaN): the same matrix, variants and filters as from float genotypes."""
    rng = np.random.default_rng(8)
    n, m = 70, 1500
    genotypes = rng.binomial(2, rng.uniform(0.0, 0.5, m), size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.003] = np.nan
    genotypes[:, 3] = np.nan  # all missing
    genotypes[rng.random(n) < 0.2, 5] = np.nan  # too many missing
    counts = _CountsReader(genotypes)
    assert kinship._chunk_of(counts, 0, 600).dtype == np.int8
    np.testing.assert_array_equal(kinship.passing_variants(counts.counts((slice(None), slice(None)))),
                                  kinship.passing_variants(genotypes))
    analyzed = rng.random(n) < 0.8
    for standardize in (False, True):
        from_counts, used = kinship.filtered_relatedness(counts, analyzed, standardize=standardize, chunk_size=600)
        from_floats, used_floats = kinship.filtered_relatedness(genotypes, analyzed, standardize=standardize,
                                                                chunk_size=600)
        assert used == used_floats < m
        np.testing.assert_allclose(from_counts, from_floats, rtol=1e-13, atol=1e-14)
