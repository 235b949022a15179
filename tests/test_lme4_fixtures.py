"""Single-model fits against lme4 fixtures (tests/fixtures/lme4, made by make_lme4_fixtures.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxlmm.formula import fit_formula

FIXTURES = Path(__file__).parent / "fixtures" / "lme4"
DATASETS = ["balanced", "unbalanced", "boundary", "large", "covariates"]


def close(got, want, rtol, atol=0.0, what=""):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def check_against_lme4(fit, ref, method, group):
    """Compare a FitResult with one lme4 block (REML or ML) to the issue's tolerances."""
    names = list(ref["fixef"])
    assert list(fit.fixef_names) == names
    close(fit.fixef, [ref["fixef"][k] for k in names], 1e-5, 1e-9, "fixef")
    close(fit.se, [ref["se"][k] for k in names], 1e-5, 0, "se")
    close(fit.fixef_cov, np.array(ref["vcov"]), 1e-5, 1e-12, "vcov")
    k = fit.term_names.index(group)
    close(fit.variances[k], ref["varcomp"][group], 1e-5, 1e-6, "group variance")
    close(fit.residual_variance, ref["varcomp"]["residual"], 1e-5, 0, "residual variance")
    want_criterion = ref["reml_criterion"] if method == "REML" else ref["deviance"]
    close(fit.criterion, want_criterion, 0, 1e-6, "criterion")
    assert fit.criterion <= want_criterion + 1e-6
    assert bool(fit.singular[k]) == bool(ref["singular"])
    levels = [str(v) for v in fit.ranef_levels[k]]
    close(fit.ranef[k], [ref["ranef"][lv] for lv in levels], 1e-5, 1e-8, "ranef")
    close(fit.ranef_condvar[k], [ref["condvar"][lv] for lv in levels], 1e-5, 1e-10, "condvar")
    assert fit.converged


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("name", DATASETS)
def test_matches_lme4(name, method):
    ref = json.loads((FIXTURES / f"{name}.json").read_text())
    data = pd.read_csv(FIXTURES / f"{name}.csv")
    fit = fit_formula(ref["formula"], data, method=method)
    check_against_lme4(fit, ref[method], method, "g")


def test_boundary_dataset_is_exactly_zero():
    ref = json.loads((FIXTURES / "boundary.json").read_text())
    fit = fit_formula(ref["formula"], pd.read_csv(FIXTURES / "boundary.csv"))
    assert fit.variances[0] == 0.0 and fit.singular[0]
    assert any("singular" in m for m in fit.messages)


@pytest.mark.parametrize("variant", ["variant1", "variant2", "variant3"])
def test_seed_per_variant_models_match_lme4(variant):
    ref = json.loads((FIXTURES / "seed.json").read_text())[variant]["REML"]
    data = pd.read_csv(FIXTURES / "seed.csv", dtype={"family": str})
    fit = fit_formula(f"height ~ {variant} + (1|family)", data)
    check_against_lme4(fit, ref, "REML", "family")


def test_seed_full_model_criterion_and_ridge():
    ref = json.loads((FIXTURES / "seed.json").read_text())["full"]["REML"]
    data = pd.read_csv(FIXTURES / "seed.csv", dtype={"family": str})
    fit = fit_formula("height ~ variant1 + variant2 + variant3 + (1|family)", data)
    close(fit.criterion, ref["reml_criterion"], 0, 1e-8)
    close(fit.criterion, 4.384914158, 0, 1e-9)
    assert not fit.identified
    assert any("not identified" in m for m in fit.messages)
