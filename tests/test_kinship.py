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
