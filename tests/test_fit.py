"""The single-model front door: the seed's printed tables, textbook BLUE/BLUP, and bad input."""

import numpy as np
import pytest

import jaxlmm
from conftest import random_problem
from jaxlmm.datasets import seed_data
from jaxlmm.demo import SEED_FULL_MODEL_RATIO, full_model, per_variant_table

# The seed's lme4 table (../shared/seed), as printed.
SEED_TABLE = {
    "variant1": dict(PVE_Fixed=20.00779, PVE_Family=0.0, PVE_Residual=79.9922054, Fixed_Variance=0.2500913,
                     Family_Variance=0.0, Residual_Variance=0.999878212, Total_Variance=1.24997, beta=-0.5000913),
    "variant2": dict(PVE_Fixed=66.60926, PVE_Family=0.0, PVE_Residual=33.3907386, Fixed_Variance=0.7267603,
                     Family_Variance=0.0, Residual_Variance=0.364319641, Total_Variance=1.09108, beta=0.8525024),
    "variant3": dict(PVE_Fixed=95.70867, PVE_Family=3.655575, PVE_Residual=0.6357522, Fixed_Variance=1.1000658,
                     Family_Variance=0.04201681, Residual_Variance=0.007307271, Total_Variance=1.14939,
                     beta=1.04884),
}


def test_seed_per_variant_table():
    rows = {row["Variant"]: row for row in per_variant_table(seed_data())}
    for variant, want in SEED_TABLE.items():
        got = rows[variant]
        for key, value in want.items():
            digits = len(repr(value).split(".")[1]) if "." in repr(value) else 0
            assert abs(got[key] - value) <= max(0.51 * 10.0**-digits, 1e-6 if "Variance" in key or key == "beta"
                                                else 0), (variant, key, got[key], value)
        assert abs(got["beta"] - want["beta"]) <= 1e-6 or variant == "variant3"
        assert abs(got["Family_Variance"] - want["Family_Variance"]) <= 1e-6
        assert abs(got["Residual_Variance"] - want["Residual_Variance"]) <= 1e-6
    assert rows["variant1"]["singular"] and rows["variant2"]["singular"] and not rows["variant3"]["singular"]
    assert rows["variant1"]["Family_Variance"] == 0.0 and rows["variant2"]["Family_Variance"] == 0.0


def test_seed_full_model():
    data = seed_data()
    fit = full_model(data)
    assert abs(fit.criterion - 4.384914158) < 1e-8
    assert not fit.identified
    held = full_model(data, SEED_FULL_MODEL_RATIO)
    assert abs(held.criterion - 4.384914158) < 1e-8  # the ridge: same criterion at the seed's point
    parts = held.variance_parts
    assert round(parts["fixed"], 4) == 1.0142
    assert round(parts["family"], 4) == 0.0155
    assert round(parts["residual"], 3) == 0.067
    assert round(sum(parts.values()), 4) == 1.0967
    assert [round(100 * held.pve[k], 2) for k in ("fixed", "family", "residual")] == [92.48, 1.41, 6.11]


def dense_oracle(y, X, Zs, Gs, variances, residual):
    """BLUE, its covariance, BLUPs and condVar straight from V with numpy."""
    n = len(y)
    V = sum(s * Z @ G @ Z.T for s, Z, G in zip(variances, Zs, Gs)) + residual * np.eye(n)
    Vi = np.linalg.inv(V)
    cov = np.linalg.inv(X.T @ Vi @ X)
    beta = cov @ X.T @ Vi @ y
    blups, condvars = [], []
    for s, Z, G in zip(variances, Zs, Gs):
        blups.append(s * G @ Z.T @ Vi @ (y - X @ beta))
        condvars.append(np.diag(s * G - s * s * G @ Z.T @ Vi @ Z @ G))
    return beta, cov, blups, condvars


@pytest.mark.parametrize("kind", ["groups", "kinship", "general", "two"])
def test_estimates_match_dense_textbook(rng, kind):
    y, X, groups, K = random_problem(rng, n=50, kinship=True)
    if kind == "groups":
        fit = jaxlmm.fit(y, X[:, 1:], groups=groups)
        terms = [jaxlmm.group_term(groups)]
    elif kind == "kinship":
        fit = jaxlmm.fit(y, X[:, 1:], kinship=K)
        terms = [jaxlmm.kinship_term(K)]
    elif kind == "general":
        Z = rng.normal(size=(50, 6))
        A = rng.normal(size=(6, 6))
        G = A @ A.T / 6
        fit = jaxlmm.fit(y, X[:, 1:], Z=Z, G=G)
        terms = [jaxlmm.general_term(Z, G)]
    else:
        fit = jaxlmm.fit(y, X[:, 1:], groups=groups, kinship=K)
        terms = [jaxlmm.group_term(groups), jaxlmm.kinship_term(K)]
    beta, cov, blups, condvars = dense_oracle(y, X, [t.Z for t in terms], [t.G for t in terms],
                                              fit.variances, fit.residual_variance)
    np.testing.assert_allclose(fit.fixef, beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.fixef_cov, cov, rtol=1e-8, atol=1e-12)
    for j in range(len(terms)):
        np.testing.assert_allclose(fit.ranef[j], blups[j], rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(fit.ranef_condvar[j], condvars[j], rtol=1e-7, atol=1e-12)
    assert fit.converged
    assert np.all(np.abs(fit.gradient) < 1e-5)


def test_prediction_error_variance_includes_fixed_effect_uncertainty(rng):
    y, X, groups, K = random_problem(rng, n=30)
    fit = jaxlmm.fit(y, X[:, 1:], groups=groups)
    term = jaxlmm.group_term(groups)
    V = fit.variances[0] * term.Z @ term.Z.T + fit.residual_variance * np.eye(30)
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.inv(X.T @ Vi @ X) @ X.T @ Vi
    s = fit.variances[0]
    pev = np.diag(s * np.eye(term.Z.shape[1]) - s * s * term.Z.T @ P @ term.Z)
    np.testing.assert_allclose(fit.ranef_pev[0], pev, rtol=1e-7)
    assert np.all(fit.ranef_pev[0] >= fit.ranef_condvar[0])


def test_general_form_with_indicator_equals_grouping_factor(rng):
    y, X, groups, K = random_problem(rng, n=30)
    by_groups = jaxlmm.fit(y, X[:, 1:], groups=groups)
    term = jaxlmm.group_term(groups)
    by_general = jaxlmm.fit(y, X[:, 1:], Z=term.Z, G=np.eye(term.Z.shape[1]))
    np.testing.assert_allclose(by_general.variances, by_groups.variances, rtol=1e-6)
    np.testing.assert_allclose(by_general.fixef, by_groups.fixef, rtol=1e-7)
    np.testing.assert_allclose(by_general.criterion, by_groups.criterion, rtol=1e-12)


def test_string_and_integer_labels_agree(rng):
    y, X, groups, K = random_problem(rng, n=30)
    a = jaxlmm.fit(y, X[:, 1:], groups=groups)
    b = jaxlmm.fit(y, X[:, 1:], groups=[f"fam{g:02d}" for g in groups])
    np.testing.assert_allclose(a.variances, b.variances, rtol=1e-10)
    assert b.ranef_levels[0][0].startswith("fam")


def test_invariances(rng):
    """Permuting samples changes nothing; rescaling y scales variances by c^2 and fixed effects by c."""
    y, X, groups, K = random_problem(rng, n=40)
    base = jaxlmm.fit(y, X[:, 1:], groups=groups)
    perm = rng.permutation(40)
    permuted = jaxlmm.fit(y[perm], X[perm, 1:], groups=groups[perm])
    np.testing.assert_allclose(permuted.variances, base.variances, rtol=1e-7)
    np.testing.assert_allclose(permuted.fixef, base.fixef, rtol=1e-8)
    c = 1e3
    scaled = jaxlmm.fit(c * y, X[:, 1:], groups=groups)
    np.testing.assert_allclose(scaled.variances, c * c * base.variances, rtol=1e-7)
    np.testing.assert_allclose(scaled.fixef, c * base.fixef, rtol=1e-8)


def test_ml_and_reml_differ_as_expected(rng):
    y, X, groups, K = random_problem(rng, n=40)
    reml = jaxlmm.fit(y, X[:, 1:], groups=groups)
    ml = jaxlmm.fit(y, X[:, 1:], groups=groups, method="ML")
    assert ml.residual_variance < reml.residual_variance  # ML divides by n, REML by n - p
    assert ml.method == "ML" and reml.method == "REML"


def test_heritability_and_pve_sum(rng):
    y, X, groups, K = random_problem(rng, n=40)
    fit = jaxlmm.fit(y, X[:, 1:], groups=groups)
    assert abs(sum(fit.pve.values()) - 1) < 1e-12
    s2u, s2e = fit.variances[0], fit.residual_variance
    assert abs(fit.heritability - s2u / (s2u + s2e)) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda y, X, g: (y[:-1], X, g), "rows"),
        (lambda y, X, g: (np.where(np.arange(len(y)) == 3, np.nan, y), X, g), "row(s) 4"),
        (lambda y, X, g: (y, np.where(np.arange(len(y))[:, None] == 5, np.inf, X), g), "row(s) 6"),
        (lambda y, X, g: (y, np.c_[X, X[:, 0] * 2], g), "rank deficient"),
        (lambda y, X, g: (np.ones_like(y), X, g), "constant"),
        (lambda y, X, g: (y, X, g[:-2]), "grouping factor"),
        (lambda y, X, g: (y[:3], X[:3], g[:3]), "observations cannot estimate"),
    ],
)
def test_bad_input_is_named(rng, mutate, message):
    y, X, groups, K = random_problem(rng, n=20)
    y2, X2, g2 = mutate(y, X[:, 1:], groups)
    with pytest.raises(jaxlmm.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jaxlmm.fit(y2, X2, groups=g2)


def test_rank_deficient_names_the_column(rng):
    y, X, groups, K = random_problem(rng, n=20)
    X2 = np.c_[X[:, 1:], X[:, 1] - X[:, 2]]
    with pytest.raises(jaxlmm.InputError, match="'extra'"):
        jaxlmm.fit(y, X2, groups=groups, fixef_names=["a", "b", "extra"])


def test_bad_kinship(rng):
    y, X, groups, K = random_problem(rng, n=20)
    asym = K.copy()
    asym[0, 1] += 1.0
    with pytest.raises(jaxlmm.InputError, match="not symmetric"):
        jaxlmm.fit(y, kinship=asym)
    with pytest.raises(jaxlmm.InputError, match="square"):
        jaxlmm.fit(y, kinship=K[:, :-1])
    with pytest.raises(jaxlmm.InputError, match="observations"):
        jaxlmm.fit(y[:-1], kinship=K)
    with pytest.raises(jaxlmm.InputError, match="positive semi-definite"):
        jaxlmm.fit(y, kinship=K - 2 * np.eye(20))


def test_no_random_effect_is_an_error(rng):
    y, X, groups, K = random_problem(rng, n=20)
    with pytest.raises(jaxlmm.InputError, match="no random effect"):
        jaxlmm.fit(y, X[:, 1:])
