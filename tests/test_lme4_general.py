"""General random-effect structures against lme4 (fixtures by tests/fixtures/lme4/make_lme4_general_fixtures.R)."""

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxlmm.lmer import anova, confint, lmer, predict, ranef, refit, varcorr

FIXTURES = Path(__file__).parent / "fixtures" / "lme4"
MODELS = {  # fixture -> (data file, string columns)
    "penicillin": ("penicillin", ("plate", "sample")),
    "pastes": ("pastes", ("batch", "cask")),
    "sleepstudy_slope": ("sleepstudy", ("Subject",)),
    "sleepstudy_uncorrelated": ("sleepstudy", ("Subject",)),
    "slope_crossed": ("slope_crossed", ("g", "h")),
    "slope_singular": ("slope_singular", ("g",)),
}
RTOL = 1e-5


def load(name):
    ref = json.loads((FIXTURES / f"{name}.json").read_text())
    csv, strings = MODELS[name]
    return ref, pd.read_csv(FIXTURES / f"{csv}.csv", dtype={c: str for c in strings})


@cache
def fitted(name, method):
    ref, data = load(name)
    return lmer(ref["formula"], data, method=method)


def differences(fit, ref, method):
    """Largest relative differences from lme4 per quantity (absolute floor ``atol`` where lme4's value is ~0)."""
    def rel(got, want, atol):
        got, want = np.asarray(got, float), np.asarray(want, float)
        return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), atol)))

    names = list(ref["fixef"])
    assert list(fit.fixef_names) == names
    rows = {(r.grp, r.var1, r.var2): r for r in varcorr(fit)}
    want_vc = [(r["grp"], r["var1"] or None, r["var2"] or None, r["vcov"], r["sdcor"]) for r in ref["varcorr"]]  # R NULL -> {}
    assert set(rows) == {w[:3] for w in want_vc}
    variances = [(rows[w[:3]].vcov, w[3]) for w in want_vc if w[2] is None]
    correlations = [(rows[w[:3]].sdcor, w[4]) for w in want_vc if w[2] is not None]
    effects = ranef(fit)
    blup, condvar = [], []
    for group, by_level in ref["ranef"].items():
        mine = effects[group]
        index = {level: j for j, level in enumerate(mine.levels)}
        assert set(index) == set(by_level)
        for level, coefs in by_level.items():
            j = index[level]
            blup += [(mine.values[j, mine.columns.index(c)], v) for c, v in coefs.items()]
            order = [mine.columns.index(c) for c in coefs]
            condvar.append((mine.condvar[j][np.ix_(order, order)].ravel(), ref["condvar"][group][level]))
    want_criterion = ref["reml_criterion"] if method == "REML" else ref["deviance"]
    scale = max(abs(v) for _, v in blup)
    return {
        "fixef": rel(fit.fixef, [ref["fixef"][k] for k in names], 1e-8),
        "se": rel(fit.se, [ref["se"][k] for k in names], 0),
        "variances": rel(*zip(*variances), 1e-8),
        "correlations": rel(*zip(*correlations), 1e-8) if correlations else 0.0,
        "sigma": rel(np.sqrt(fit.residual_variance), ref["sigma"], 0),
        "criterion": rel(fit.criterion, want_criterion, 0),
        "criterion_excess": fit.criterion - want_criterion,
        "blup": rel(*zip(*blup), 1e-3 * scale),
        "condvar": rel(np.concatenate([c[0] for c in condvar]), np.concatenate([c[1] for c in condvar]), 1e-8),
    }


@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_lme4(name, method):
    ref, _ = load(name)
    fit = fitted(name, method)
    diffs = differences(fit, ref[method], method)
    excess = diffs.pop("criterion_excess")
    assert excess <= 1e-6, f"criterion worse than lme4's by {excess}"
    assert max(diffs.values()) <= RTOL, diffs
    assert fit.singular == ref[method]["singular"]
    assert fit.converged


def test_singular_slope_is_pinned_at_exactly_zero():
    fit = fitted("slope_singular", "REML")
    assert fit.theta[2] == 0.0 and fit.singular
    assert abs(varcorr(fit)[2].sdcor) == pytest.approx(1.0, abs=1e-12)  # a correlation of -+1
    assert any("singular" in m for m in fit.messages)


def test_predict_anova_confint_match_lme4():
    ref, data = load("sleepstudy_slope")
    fit = fitted("sleepstudy_slope", "REML")
    new = pd.DataFrame({"Days": ref["predict"]["newdata"]["Days"], "Subject": ref["predict"]["newdata"]["Subject"]})
    np.testing.assert_allclose(predict(fit, new), ref["predict"]["conditional"], rtol=1e-6)
    np.testing.assert_allclose(predict(fit, new, random=False), ref["predict"]["population"], rtol=1e-9)
    np.testing.assert_allclose(predict(fit), ref["predict"]["fitted"], rtol=1e-6)
    np.testing.assert_allclose(predict(fit, data), fit.fitted, rtol=1e-12)
    np.testing.assert_allclose(confint(fit), np.array(ref["confint_wald"]), rtol=1e-6)
    table = anova(fitted("sleepstudy_uncorrelated", "REML"), fit)
    assert table.refitted
    np.testing.assert_allclose(table.deviance, ref["anova"]["deviance"], rtol=1e-9)
    np.testing.assert_array_equal(table.npar, ref["anova"]["npar"])
    assert table.chisq[1] == pytest.approx(ref["anova"]["chisq"], rel=1e-4)
    assert table.p[1] == pytest.approx(ref["anova"]["p"], rel=1e-5)
    ml = refit(fit, "ML")
    assert ml.criterion == pytest.approx(ref["anova"]["deviance"][1], abs=1e-6)


def test_intercept_only_boundary_fixture_through_pls_matches_lme4():
    """The core fitter's (1|g) boundary fixture through the PLS path: variance exactly 0, same criterion, BLUPs."""
    for name in ("boundary",):
        ref = json.loads((FIXTURES / f"{name}.json").read_text())
        data = pd.read_csv(FIXTURES / f"{name}.csv", dtype={"g": str})
        for method in ("REML", "ML"):
            fit, want = lmer(ref["formula"], data, method=method), ref[method]
            np.testing.assert_allclose(fit.fixef, list(want["fixef"].values()), rtol=1e-6)
            np.testing.assert_allclose(fit.covariances[0][0, 0], want["varcomp"]["g"], rtol=1e-5, atol=1e-10)
            assert fit.criterion <= (want["reml_criterion"] if method == "REML" else want["deviance"]) + 1e-6
            np.testing.assert_allclose(fit.ranef[0][:, 0], [want["ranef"][lv] for lv in fit.levels[0]],
                                       rtol=1e-5, atol=1e-9)
            assert fit.singular == want["singular"]
            if want["singular"]:
                assert fit.covariances[0][0, 0] == 0.0


def test_summary_text_and_json_view():
    from jaxlmm.report import mixed_summary, mixed_to_dict

    ref, _ = load("sleepstudy_slope")
    fit = fitted("sleepstudy_slope", "REML")
    text = mixed_summary(fit)
    assert f"REML criterion at convergence: {ref['REML']['reml_criterion']:.4f}" in text
    assert "Scaled residuals:" in text and "Number of obs: 180, groups:  Subject, 18" in text
    assert " Days " in text and "0.07" in text  # the slope row carries the intercept-slope correlation
    view = mixed_to_dict(fit)
    want = {(r["grp"], r["var1"] or None): r["vcov"] for r in ref["REML"]["varcorr"] if not r["var2"]}
    assert view["varcomp"]["Subject.Days"] == pytest.approx(want[("Subject", "Days")], rel=1e-5)
    assert view["ranef"]["Subject"]["308"]["Days"] == pytest.approx(ref["REML"]["ranef"]["Subject"]["308"]["Days"],
                                                                     rel=1e-5)
