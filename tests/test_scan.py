"""The variant scan: against lme4, against jaxlmm.fit, and its own invariances (chunks, devices, phenotypes)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.scan import center, scan

FIXTURES = Path(__file__).parent / "fixtures" / "lme4"


@pytest.fixture(scope="module")
def group_scan_data():
    data = pd.read_csv(FIXTURES / "scan_groups.csv")
    genotypes = data[[f"v{j}" for j in range(1, 221)]].to_numpy()
    return data.y.to_numpy(), genotypes, data[["c1", "c2"]].to_numpy(), data.g.to_numpy()


@pytest.fixture(scope="module")
def group_scan(group_scan_data):
    y, genotypes, covariates, groups = group_scan_data
    return scan(y, genotypes, covariates, groups=groups, chunk_size=64, min_maf=0.0)


def simulated(rng, n=120, m=50, p=1):
    """Genotypes with a kinship from a separate set of variants, phenotypes with a polygenic part."""
    background = rng.binomial(2, 0.3, size=(n, 400)).astype(float)
    centred = background - background.mean(axis=0)
    K = centred @ centred.T / 400
    genotypes = rng.binomial(2, rng.uniform(0.05, 0.5, size=m), size=(n, m)).astype(float)
    polygenic = centred @ rng.normal(scale=0.05, size=(400, p))
    Y = polygenic + genotypes[:, :1] * 0.3 + rng.normal(size=(n, p))
    return Y, genotypes, rng.normal(size=(n, 2)), K


def test_group_scan_matches_lme4(group_scan):
    ref = pd.read_csv(FIXTURES / "scan_groups_results.csv")
    got = group_scan.columns
    assert list(got["variant"]) == list(ref.variant.str.replace("v", "v"))
    np.testing.assert_allclose(got["beta"], ref.beta, rtol=1e-6)
    np.testing.assert_allclose(got["se"], ref.se, rtol=1e-6)
    np.testing.assert_allclose(got["s2_g"], ref.s2_g, rtol=1e-6)
    np.testing.assert_allclose(got["s2_e"], ref.s2_e, rtol=1e-6)
    np.testing.assert_allclose(-2 * got["logl_remle"], ref.reml_criterion, atol=1e-6)
    np.testing.assert_allclose(-2 * got["logl_mle"], ref.deviance_ml, atol=1e-6)
    assert (got["status"] == "ok").all() and got["converged"].all()


def test_group_scan_rows_equal_single_fits(group_scan, group_scan_data):
    y, genotypes, covariates, groups = group_scan_data
    got = group_scan.columns
    for j in range(genotypes.shape[1]):
        assert_row_equals_fit(got, j, jaxlmm.fit(y, np.c_[covariates, genotypes[:, j]], groups=groups))


def assert_row_equals_fit(columns, j, fit):
    """Scan row j agrees with a single-model fit of the same variant (the variant is the last fixed effect)."""
    np.testing.assert_allclose(columns["beta"][j], fit.fixef[-1], rtol=1e-6)
    np.testing.assert_allclose(columns["se"][j], fit.se[-1], rtol=1e-6)
    np.testing.assert_allclose(columns["s2_g"][j], fit.variances[0], rtol=1e-6)
    np.testing.assert_allclose(columns["s2_e"][j], fit.residual_variance, rtol=1e-6)


def test_kinship_scan_rows_equal_single_fits(rng):
    Y, genotypes, covariates, K = simulated(rng, m=30)
    result = scan(Y[:, 0], genotypes, covariates, kinship=K, center_kinship=False, min_maf=0.0)
    got = result.columns
    for j in range(genotypes.shape[1]):
        fit = jaxlmm.fit(Y[:, 0], np.c_[covariates, genotypes[:, j]], kinship=K)
        if fit.singular[0]:  # the scan reports GEMMA's lower bound 1e-5 instead of an exact 0
            assert got["lambda_remle"][j] == pytest.approx(1e-5)
            continue
        assert_row_equals_fit(got, j, fit)


def test_null_model_equals_single_fit(rng):
    Y, genotypes, covariates, K = simulated(rng, m=5)
    result = scan(Y[:, 0], genotypes, covariates, kinship=K, center_kinship=False, min_maf=0.0)
    fit = jaxlmm.fit(Y[:, 0], covariates, kinship=K)
    np.testing.assert_allclose(result.null.s2_g[0], fit.variances[0], rtol=1e-6)
    np.testing.assert_allclose(result.null.logl_remle[0], fit.loglik, rtol=1e-10)


def test_chunking_and_sources_do_not_change_results(rng):
    Y, genotypes, covariates, K = simulated(rng, m=37)
    whole = scan(Y[:, 0], genotypes, covariates, kinship=K, chunk_size=64).columns
    small = scan(Y[:, 0], genotypes, covariates, kinship=K, chunk_size=8).columns
    chunks = (genotypes[:, i:i + 10] for i in range(0, 37, 10))
    streamed = scan(Y[:, 0], chunks, covariates, kinship=K, chunk_size=16).columns
    for other in (small, streamed):
        for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "lambda_remle"):
            np.testing.assert_allclose(other[key], whole[key], rtol=1e-9, err_msg=key)
        assert list(other["variant"]) == list(whole["variant"])


def test_chunks_fitted_at_once_equal_chunks_fitted_one_by_one(rng, monkeypatch):
    """On CPU several chunks are fitted at once from launcher threads: same rows, in order, as one at a time."""
    import importlib

    scan_module = importlib.import_module("jaxlmm.scan")
    Y, genotypes, covariates, K = simulated(rng, m=45)
    together = scan(Y[:, 0], genotypes, covariates, kinship=K, chunk_size=8).columns
    monkeypatch.setattr(scan_module, "CONCURRENT_CHUNKS_CPU", 1)
    alone = scan(Y[:, 0], genotypes, covariates, kinship=K, chunk_size=8).columns
    for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "lambda_remle", "status"):
        np.testing.assert_array_equal(together[key], alone[key], err_msg=key)


def test_many_phenotypes_equal_one_at_a_time(rng):
    Y, genotypes, covariates, K = simulated(rng, m=12, p=3)
    together = scan(Y, genotypes, covariates, kinship=K).columns
    for p in range(3):
        alone = scan(Y[:, p], genotypes, covariates, kinship=K).columns
        rows = together["phenotype"] == p + 1
        for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "lambda_mle"):
            np.testing.assert_allclose(together[key][rows], alone[key], rtol=1e-9, err_msg=key)


def test_every_variant_gets_a_row_with_a_status(rng):
    Y, genotypes, covariates, K = simulated(rng, m=8)
    genotypes[:, 1] = 1.0  # monomorphic
    genotypes[:, 2] = np.nan  # all missing
    genotypes[:20, 3] = np.nan  # 1/6 missing
    genotypes[:3, 4] = np.nan  # 2.5% missing: imputed
    genotypes[:, 5] = 0.0
    genotypes[0, 5] = 1.0  # maf 1/240
    result = scan(Y[:, 0], genotypes, covariates, kinship=K, variant_names=[f"snp{j}" for j in range(8)])
    got = result.columns
    assert list(got["variant"]) == [f"snp{j}" for j in range(8)]
    assert list(got["status"][1:6]) == ["monomorphic", "all_missing", "too_many_missing", "ok", "low_maf"]
    assert list(got["n_miss"][1:5]) == [0, 120, 20, 3]
    assert np.isnan(got["p_wald"][[1, 2, 3, 5]]).all()
    ok = got["status"] == "ok"
    assert np.isfinite(got["p_wald"][ok]).all() and np.isfinite(got["p_lrt"][ok]).all()
    imputed = genotypes[:, 4].copy()
    imputed[:3] = np.nanmean(imputed)
    fit = jaxlmm.fit(Y[:, 0], np.c_[covariates, imputed], kinship=center(K))  # the scan centres K as GEMMA does
    np.testing.assert_allclose(got["beta"][4], fit.fixef[-1], rtol=1e-6)


def test_null_mode_keeps_the_null_lambda(rng):
    Y, genotypes, covariates, K = simulated(rng, m=10)
    exact = scan(Y[:, 0], genotypes, covariates, kinship=K)
    approx = scan(Y[:, 0], genotypes, covariates, kinship=K, mode="null")
    assert np.allclose(approx.columns["lambda_remle"], exact.null.lambda_remle[0])
    assert np.isnan(approx.columns["p_lrt"]).all()
    np.testing.assert_allclose(approx.columns["p_score"], exact.columns["p_score"], rtol=1e-12)
    # close to exact when the variant explains little
    np.testing.assert_allclose(-np.log10(approx.columns["p_wald"]), -np.log10(exact.columns["p_wald"]), atol=0.1)


def test_float32_rotation_close_to_float64(rng):
    Y, genotypes, covariates, K = simulated(rng, m=20)
    exact = scan(Y[:, 0], genotypes, covariates, kinship=K).columns
    fast = scan(Y[:, 0], genotypes, covariates, kinship=K, rotation_dtype=np.float32).columns
    np.testing.assert_allclose(-np.log10(fast["p_wald"]), -np.log10(exact["p_wald"]), atol=1e-3)
    np.testing.assert_allclose(fast["beta"], exact["beta"], rtol=1e-4)


def test_float32_rotation_is_not_left_to_tensor_cores(rng):
    """JAX lets GPUs multiply float32 as TensorFloat32 (~1e-3 relative error) unless a product asks for full
    precision: every float32 product of the scan's chunk program (the rotation) asks for it."""
    import jax

    from jaxlmm.scan import prepare_scan

    Y, _, covariates, K = simulated(rng, m=1)
    prepared = prepare_scan(Y[:, 0], covariates, kinship=K, rotation_dtype=np.float32, chunk_size=16)
    fit, width = prepared.fit_chunk, prepared.width
    with jax.enable_x64(True):
        program = fit.func.lower(*fit.args, np.zeros((K.shape[0], width), np.int8), np.zeros(width),
                                 np.zeros(width, bool), **fit.keywords).as_text()
    float32_products = [line for line in program.splitlines() if "dot_general" in line and "xf32>" in line]
    assert float32_products
    assert all("precision = [HIGHEST, HIGHEST]" in line for line in float32_products)


def test_kinship_decomposed_on_the_device_gives_the_host_results(rng, monkeypatch):
    """On a GPU the kinship is decomposed there (jnp.linalg.eigh), on a CPU by numpy: forced onto JAX's device
    here, the basis (up to each vector's sign) and the scan's results are the host's."""
    from jaxlmm import structure

    Y, genotypes, covariates, K = simulated(rng, m=30)
    on_host = scan(Y[:, 0], genotypes, covariates, kinship=K).columns
    host_basis = structure.spectral_basis(structure.kinship_term(K))
    monkeypatch.setattr(structure, "EIGH_ON_HOST_PLATFORMS", ())
    device_basis = structure.spectral_basis(structure.kinship_term(K))
    on_device = scan(Y[:, 0], genotypes, covariates, kinship=K).columns
    assert device_basis.values.dtype == device_basis.vectors.dtype == np.float64
    np.testing.assert_allclose(device_basis.values, host_basis.values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(device_basis.vectors) * np.asarray(host_basis.vectors),
                                             axis=0)), 1.0, atol=1e-8)
    np.testing.assert_array_equal(on_device["status"], on_host["status"])
    np.testing.assert_allclose(np.log10(on_device["p_wald"]), np.log10(on_host["p_wald"]), atol=1e-9)
    np.testing.assert_allclose(on_device["beta"], on_host["beta"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("block", [7, 512])  # many blocks, or one
def test_kinship_checks_by_blocks(rng, monkeypatch, block):
    """validate.kinship checks and symmetrizes by blocks: (K + K') / 2 bit for bit, into a new array (the caller's
    untouched) or in place with overwrite; the largest asymmetry and the first non-finite entry are named."""
    from jaxlmm import InputError, validate

    monkeypatch.setattr(validate, "KINSHIP_BLOCK", block)
    W = rng.normal(size=(30, 40))
    K = W @ W.T / 40
    K[3, 17] += 1e-10  # asymmetric within rounding
    before = K.copy()
    expected = np.add(K, K.T) * 0.5
    out = validate.kinship(K, 30, check_psd=False)
    assert out is not K and np.array_equal(K, before)
    np.testing.assert_array_equal(out, expected)
    assert validate.kinship(K, 30, check_psd=False, overwrite=True) is K
    np.testing.assert_array_equal(K, expected)
    bad = before.copy()
    bad[20, 9] += 0.5
    bad[2, 25] += 0.25
    with pytest.raises(InputError, match=rf"entry \(10, 21\) is {float(bad[9, 20])!r} but \(21, 10\) is {float(bad[20, 9])!r}"):
        validate.kinship(bad, 30, overwrite=True)
    bad = before.copy()
    bad[22, 4], bad[5, 28] = np.inf, np.nan
    with pytest.raises(InputError, match="row 6, column 29"):
        validate.kinship(bad, 30)


def test_kinship_decomposed_in_place_on_the_host(rng, monkeypatch):
    """decompose(overwrite=True) of a matrix of IN_PLACE_MIN_SIZE rows or more leaves the eigenvectors in its own
    memory (no (n, n) copy); without overwrite the matrix is untouched; both equal numpy's eigh (vectors up to
    sign), and U' is row-major without a copy."""
    from jaxlmm import structure

    monkeypatch.setattr(structure, "IN_PLACE_MIN_SIZE", 50)
    _, _, _, K = simulated(rng, n=60)
    K = center(K)
    reference_values, reference_vectors = np.linalg.eigh(K)
    kept = reference_values > 1e-10 * reference_values.max()
    before = K.copy()
    apart = structure.decompose(K, overwrite=False)
    assert np.array_equal(K, before)
    inside = structure.decompose(K, overwrite=True)
    assert np.shares_memory(inside.vectors, K) and not np.shares_memory(apart.vectors, K)
    for basis in (apart, inside):
        np.testing.assert_allclose(basis.values, reference_values[kept], rtol=1e-10)
        np.testing.assert_allclose(np.abs(np.sum(basis.vectors * reference_vectors[:, kept], axis=0)), 1.0,
                                   atol=1e-10)
    assert np.asarray(inside.vectors).T.flags.c_contiguous


def test_scan_kinship_costs_at_most_one_copy(rng, monkeypatch):
    """prepare_scan leaves the caller's kinship as it was and makes one (n, n) copy of it, none with
    overwrite_kinship, besides LAPACK's workspace (2 n^2): peak host allocations (tracemalloc sees numpy's) of
    3.3 and 2.3 matrices (the scan used to hold ~8: validated, centred and identity copies, numpy's eigh input copy
    and output); results identical either way, and with check_kinship=False (a kinship the caller checked: no
    second pass, only its size is checked)."""
    import tracemalloc

    from jaxlmm import InputError, structure
    from jaxlmm.scan import prepare_scan

    monkeypatch.setattr(structure, "IN_PLACE_MIN_SIZE", 400)  # as for n >= 4000
    Y, _, covariates, K = simulated(rng, n=400)
    K = np.add(K, K.T) * 0.5  # symmetric bit for bit, as validate.kinship leaves it
    matrix = 400 * 400 * 8
    before = K.copy()
    prepare_scan(Y[:, 0], covariates, kinship=K)  # imports and compilations first, not counted
    peaks, nulls = [], []
    for overwrite, check in ((False, True), (True, True), (True, False)):
        given = K.copy() if overwrite else K
        tracemalloc.start()
        prepared = prepare_scan(Y[:, 0], covariates, kinship=given, overwrite_kinship=overwrite, check_kinship=check)
        peaks.append(tracemalloc.get_traced_memory()[1] / matrix)
        tracemalloc.stop()
        nulls.append(prepared.null)
    assert np.array_equal(K, before)
    assert peaks[0] < 3.3 and peaks[1] < 2.3 and peaks[2] < 2.3, peaks
    for other in nulls[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(nulls[0], other))
    with pytest.raises(InputError, match="kinship is 399 x 399 but there are 400 observations"):
        prepare_scan(Y[:, 0], covariates, kinship=K[:-1, :-1], check_kinship=False)


def test_int8_genotypes(rng):
    Y, genotypes, covariates, K = simulated(rng, m=10)
    as_float = scan(Y[:, 0], genotypes, covariates, kinship=K).columns
    as_int8 = scan(Y[:, 0], genotypes.astype(np.int8), covariates, kinship=K).columns
    np.testing.assert_array_equal(as_int8["p_wald"], as_float["p_wald"])


def test_packing_the_variants_that_pass_the_filters_changes_no_row(rng, monkeypatch):
    """int8 counts are summarized on the host and only variants passing the filters are fitted, packed across chunk
    boundaries: every row (statuses, NaN for the filtered, converged/iterations) equals the unpacked scan's and the
    float scan's (summarized on the device), with filtered variants of every kind, missing calls and HWE."""
    import importlib

    scan_module = importlib.import_module("jaxlmm.scan")
    Y, genotypes, covariates, K = simulated(rng, m=45)
    genotypes[:, [1, 9, 10, 11, 12, 30]] = 1.0  # monomorphic, a run of them across a chunk boundary
    genotypes[:, 17] = np.nan  # all missing
    genotypes[:20, 18] = np.nan  # too many missing
    genotypes[:3, [19, 40]] = np.nan  # imputed
    genotypes[:, 25] = 0.0
    genotypes[0, 25] = 1.0  # low maf
    genotypes[:, 33] = 2.0
    genotypes[:60, 33] = 0.0  # no heterozygotes: fails the HWE test
    counts = np.where(np.isnan(genotypes), -1, genotypes).astype(np.int8)
    options = dict(kinship=K, chunk_size=8, min_hwe_p=1e-6)
    packed = scan(Y[:, 0], counts, covariates, **options).columns
    as_float = scan(Y[:, 0], genotypes, covariates, **options).columns
    monkeypatch.setattr(scan_module, "PACK_FILTERED", False)
    unpacked = scan(Y[:, 0], counts, covariates, **options).columns
    assert {"monomorphic", "all_missing", "too_many_missing", "low_maf", "hwe", "ok"} == set(packed["status"])
    for other in (unpacked, as_float):
        for key, values in packed.items():
            np.testing.assert_array_equal(values, other[key], err_msg=key)


def test_chunks_read_ahead_and_full_batches_change_no_row(rng, monkeypatch, tmp_path):
    """Off the CPU chunks are read and summarized ahead in a pool of the host's cores, and a full batch goes to
    the device with one copy (its pieces written into it): forced here (3 threads, chunks of 16 variants; chunks that pass the
    filters whole fill a batch by themselves), every row equals the plain scan's, for an array, an iterable of
    chunks and a PLINK fileset; a bad chunk is still named; a batch never aliases the caller's array (its fit may
    run after the caller reuses it)."""
    import importlib

    from jaxlmm.io.plink import BedReader
    from jaxlmm.validate import InputError
    from test_plink_and_cli_scan import write_plink

    scan_module = importlib.import_module("jaxlmm.scan")
    Y, genotypes, covariates, K = simulated(rng, m=48)
    genotypes[:, 20] = 1.0  # monomorphic: its chunk is packed
    genotypes[:5, 40] = np.nan
    counts = np.where(np.isnan(genotypes), -1, genotypes).astype(np.int8)
    prefix = str(tmp_path / "g")
    write_plink(prefix, genotypes, Y[:, 0])
    plain = scan(Y[:, 0], counts, covariates, kinship=K, chunk_size=16).columns
    monkeypatch.setattr(scan_module, "_read_ahead_threads", lambda platform: 3)
    for name, source in (("array", counts), ("chunks", (counts[:, a:a + 16] for a in range(0, 48, 16))),
                         ("plink", BedReader(prefix))):
        ahead = scan(Y[:, 0], source, covariates, kinship=K, chunk_size=16).columns
        for key, values in plain.items():
            np.testing.assert_array_equal(ahead[key], values, err_msg=f"{name}: {key}")
    with pytest.raises(InputError, match="chunk at variant 17 has shape"):
        scan(Y[:, 0], (counts[:, :16], counts[:5, 16:32]), covariates, kinship=K, chunk_size=16)
    columns = np.asfortranarray(counts[:, :16])
    raw, means, excluded = scan_module._batch_arguments(counts.shape[0], 16, np.int8,
                                                        [(columns, np.ones(16), np.zeros(16, bool))])
    assert raw.flags.c_contiguous and not np.shares_memory(raw, columns)
    np.testing.assert_array_equal(raw, columns)
    raw, means, excluded = scan_module._batch_arguments(counts.shape[0], 16, np.int8, [
        (counts[:, :6], np.arange(6.0), False), (counts[:, 30:35], np.arange(5.0), np.arange(5) == 2)])
    np.testing.assert_array_equal(raw, np.c_[counts[:, :6], counts[:, 30:35], np.zeros((counts.shape[0], 5))])
    np.testing.assert_array_equal(means, np.r_[np.arange(6.0), np.arange(5.0), np.zeros(5)])
    np.testing.assert_array_equal(excluded, np.r_[np.zeros(6), np.arange(5) == 2, np.ones(5)].astype(bool))


def test_host_summary_of_every_genotype_type_equals_masked_sums(rng):
    """The host's per-variant summary (missing calls, means, spread, status) of int8 counts with -1 or -9 for
    missing calls, int16 and uint8 counts, and float32/float64 with NaN equals plain masked sums, column by column
    (the int8 path sums missing calls as they are and adds them back; the smallest observed value comes from the
    unsigned view)."""
    import importlib

    scan_module = importlib.import_module("jaxlmm.scan")
    summary_of = scan_module._summary
    values = rng.choice([0.0, 1.0, 2.0], size=(41, 9))
    values[:, 0] = 1.0  # monomorphic
    values[:4, 1] = np.nan  # missing calls
    values[:, 2] = np.nan  # all missing
    values[:10, 3] = np.nan  # too many missing
    values[10:12, 3] = (0.0, 2.0)
    values[:, 4] = 2.0
    values[:2, 4] = np.nan  # monomorphic with missing calls
    values[:, 5] = 0.0
    values[7, 5] = 1.0  # low maf
    hwe_failed = np.zeros(9, bool)
    hwe_failed[6] = True
    missing = np.isnan(values)
    n_miss = missing.sum(axis=0)
    observed = np.ma.masked_array(values, missing)
    means = np.where(n_miss < 41, observed.sum(axis=0).filled(0.0) / np.maximum(41 - n_miss, 1), 0.0)
    spread = (observed.max(axis=0) - observed.min(axis=0)).filled(0.0)
    chunks = {"int8 -1": np.where(missing, -1, values).astype(np.int8),
              "int8 -9": np.where(missing, -9, values).astype(np.int8),
              "int16 -1 (F order)": np.asfortranarray(np.where(missing, -1, values).astype(np.int16)),
              "float32": values.astype(np.float32), "float64": values}
    for name, chunk in chunks.items():
        summary = summary_of(chunk, hwe_failed, 0.05, 0.2)
        np.testing.assert_array_equal(summary.n_miss, n_miss, err_msg=name)
        np.testing.assert_array_equal(summary.means, means, err_msg=name)
        np.testing.assert_array_equal(summary.spread > 0, spread > 0, err_msg=name)
        np.testing.assert_array_equal(summary.af, np.where(n_miss < 41, means / 2, np.nan), err_msg=name)
        assert [scan_module.STATUS_CODES[code] for code in summary.status] == [
            "monomorphic", "ok", "all_missing", "too_many_missing", "monomorphic", "low_maf", "hwe", "ok", "ok"], name
    complete = np.nan_to_num(values[:, [0, 5, 6]]).astype(np.uint8)
    summary = summary_of(complete, np.zeros(3, bool), 0.05, 0.2)
    np.testing.assert_array_equal(summary.means, complete.mean(axis=0))
    np.testing.assert_array_equal(summary.spread, np.ptp(complete, axis=0))
    carriers = np.nan_to_num(values) > 0  # neither counts nor floats: summarized as floats
    as_floats = summary_of(carriers * 1.0, hwe_failed, 0.05, 0.2)
    for got, want in zip(summary_of(carriers, hwe_failed, 0.05, 0.2), as_floats):
        np.testing.assert_array_equal(got, want)


def test_bad_scan_input_is_named(rng):
    Y, genotypes, covariates, K = simulated(rng, m=4)
    with pytest.raises(jaxlmm.InputError, match="exactly one random effect"):
        scan(Y[:, 0], genotypes, covariates)
    with pytest.raises(jaxlmm.InputError, match=r"shape \(100, 4\)"):
        scan(Y[:, 0], genotypes[:100], covariates, kinship=K)
    with pytest.raises(jaxlmm.InputError, match="mode"):
        scan(Y[:, 0], genotypes, covariates, kinship=K, mode="fast")
    y = Y[:, 0].copy()
    y[7] = np.nan
    with pytest.raises(jaxlmm.InputError, match="row.s. 8"):
        scan(y, genotypes, covariates, kinship=K)


MULTI_DEVICE_SCRIPT = """
import numpy as np, jax, sys
sys.path.insert(0, {tests!r})
from test_scan import simulated
from jaxlmm.scan import center, scan
assert len(jax.devices()) == 4, jax.devices()
Y, genotypes, covariates, K = simulated(np.random.default_rng(5), m=45)
out = scan(Y[:, 0], genotypes, covariates, kinship=K, chunk_size=16).columns
np.savez({path!r}, **{{k: out[k] for k in ("beta", "se", "p_wald", "p_lrt", "p_score", "lambda_remle")}})
"""


def test_four_devices_equal_one(tmp_path):
    path = str(tmp_path / "multi.npz")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    script = MULTI_DEVICE_SCRIPT.format(tests=str(Path(__file__).parent), path=path)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    multi = np.load(path)
    Y, genotypes, covariates, K = simulated(np.random.default_rng(5), m=45)
    single = scan(Y[:, 0], genotypes, covariates, kinship=K, chunk_size=16).columns
    # equal up to floating-point rounding (matrix-product blocking differs with the per-device shape, and the
    # per-variant Newton stops within its tolerance of the same optimum)
    for key in multi.files:
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-8, err_msg=key)


def test_fits_the_grid_decides_for_the_boundary_are_the_fits_refined_before_the_boundary_wins(monkeypatch):
    """Boundary optima certain from the grid (ML here, as in the simulated N = 500 set: unrelated samples of ten
    populations, a phenotype mostly of the kinship) are not refined: the scan equals the one that refines every
    interior candidate first (BOUNDARY_MARGIN = inf, nothing certain)."""
    import importlib

    import jax

    scan_module = importlib.import_module("jaxlmm.scan")
    rng = np.random.default_rng(7)
    n, m = 300, 128
    population = rng.integers(10, size=n)

    def genotypes_of(b):
        p = rng.uniform(0.05, 0.5, size=b)
        local = rng.beta(p * 19, (1 - p) * 19, size=(10, b))
        return rng.binomial(2, local[population]).astype(np.int8)

    background = genotypes_of(3000).astype(float)
    centred = background - background.mean(axis=0)
    K = centred @ centred.T / 3000
    genotypes = genotypes_of(m)
    y = rng.normal(size=n) + centred @ rng.normal(scale=0.05, size=3000)
    decided = scan(y, genotypes, kinship=K, chunk_size=m).columns
    at_bound = {key: np.isclose(decided[key], 1e5, rtol=1e-12) for key in ("lambda_mle", "lambda_remle")}
    assert at_bound["lambda_mle"].all() and not at_bound["lambda_remle"].all()
    jax.clear_caches()  # the margin is read when the chunk fit is traced
    monkeypatch.setattr(scan_module, "BOUNDARY_MARGIN", np.inf)
    refined = scan(y, genotypes, kinship=K, chunk_size=m).columns
    jax.clear_caches()
    for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "lambda_remle", "lambda_mle", "logl_mle", "logl_remle"):
        np.testing.assert_allclose(decided[key], refined[key], rtol=1e-9, atol=0, err_msg=key)
    np.testing.assert_array_equal(decided["status"], refined["status"])
    np.testing.assert_array_equal(decided["converged"], refined["converged"])
