"""The scan against GEMMA 0.98.5 -lmm 4 on its mouse HS1940 example (tests/fixtures/gemma, made by
make_gemma_fixtures.sh): PLINK input, phenotype 1, GEMMA's -gk 1 kinship (recomputed here, checked against GEMMA's)."""

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxlmm.io.plink import BedReader
from jaxlmm.kinship import passing_variants, relatedness
from jaxlmm.scan import scan

FIXTURES = Path(__file__).parent / "fixtures" / "gemma"


def assert_matches_gemma(ours, ref):
    """ours: our scan columns (lambda_remle/lambda_mle or GEMMA's l_remle/l_mle), rows aligned with GEMMA's ref."""
    for key in ("p_wald", "p_lrt", "p_score"):
        diff = np.abs(np.log10(ours[key].to_numpy()) - np.log10(ref[key].to_numpy()))
        assert diff.max() <= 1e-3, (key, diff.max())
    # GEMMA prints 7 significant digits
    for key, theirs in (("beta", "beta"), ("se", "se"), ("lambda_remle", "l_remle"), ("lambda_mle", "l_mle")):
        values = ours[key if key in ours else theirs].to_numpy()
        np.testing.assert_allclose(values, ref[theirs].to_numpy(), rtol=1e-4, err_msg=key)
    np.testing.assert_allclose(ours.logl_H1.to_numpy(), ref.logl_H1.to_numpy(), atol=1e-3)
    # GEMMA prints af with 3 decimals: ours must round to it (ties either way)
    assert np.abs(ours.af.to_numpy() - ref.af.to_numpy()).max() <= 5e-4 + 1e-9


@pytest.fixture(scope="module")
def mouse():
    reader = BedReader(FIXTURES / "mouse_hs1940")
    phenotype = reader.fam.phenotype
    analyzed = ~np.isnan(phenotype)
    genotypes = reader[:, :]
    passing = passing_variants(genotypes[analyzed])
    kinship = relatedness(reader, passing)
    return reader, phenotype, analyzed, genotypes, passing, kinship


def test_kinship_matches_gemma_gk1(mouse):
    reader, phenotype, analyzed, genotypes, passing, kinship = mouse
    summary = json.loads((FIXTURES / "kinship_gk1_summary.json").read_text())
    assert passing.sum() == 10768
    np.testing.assert_allclose(kinship[:5], np.array(summary["first_5_rows"]), atol=1e-9)
    np.testing.assert_allclose(np.diag(kinship), np.array(summary["diagonal"]), atol=1e-9)
    assert abs(np.trace(kinship) - summary["trace"]) < 1e-6


def test_kinship_matches_gemma_gk2(mouse):
    reader, phenotype, analyzed, genotypes, passing, kinship = mouse
    summary = json.loads((FIXTURES / "kinship_gk2_summary.json").read_text())
    standardized = relatedness(reader, passing, standardize=True)
    np.testing.assert_allclose(standardized[:5], np.array(summary["first_5_rows"]), atol=1e-8)


def test_scan_matches_gemma_lmm4(mouse):
    reader, phenotype, analyzed, genotypes, passing, kinship = mouse
    with gzip.open(FIXTURES / "mouse_lmm4.assoc.txt.gz", "rt") as handle:
        ref = pd.read_csv(handle, sep="\t")
    result = scan(phenotype[analyzed], genotypes[analyzed], kinship=kinship[np.ix_(analyzed, analyzed)],
                  variant_names=reader.bim.rsid)
    got = result.to_pandas()
    ok = got[got.status == "ok"]
    # GEMMA drops filtered SNPs from its output; we keep them with a status: the analyzed sets must agree
    assert len(got) == 12226 and list(ok.variant) == list(ref.rs)
    assert_matches_gemma(ok.set_index("variant").loc[ref.rs], ref)
    null = json.loads((FIXTURES / "null_model.json").read_text())
    assert round(float(result.null.pve[0]), 6) == null["pve"]
    assert abs(result.null.pve_se[0] - null["pve_se"]) < 1e-7
    assert abs(result.null.s2_g[0] - null["vg"]) < 1e-5 and abs(result.null.s2_e[0] - null["ve"]) < 1e-6
    assert abs(result.null.logl_mle[0] - null["mle_logl"]) < 0.005
    # GEMMA's REML log-likelihood carries -log|W'W|/2, lme4's does not (we report lme4's)
    assert abs(result.null.logl_remle[0] + 0.5 * np.log(analyzed.sum()) - null["remle_logl"]) < 0.005
