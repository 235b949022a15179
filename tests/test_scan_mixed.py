"""The general-random-effects scan against a loop of single PLS fits."""

import math
from pathlib import Path

import numpy as np
import pandas as pd

import jaxlmm
from jaxlmm.mixed import fit_mixed
from jaxlmm.scan_mixed import random_blocks

FIXTURES = Path(__file__).parent / "fixtures" / "lme4"


def test_scan_on_random_slopes_and_crossed_factor_equals_single_fits():
    table = pd.read_csv(FIXTURES / "slope_crossed.csv", dtype={"g": str, "h": str})
    rng = np.random.default_rng(0)
    G = rng.binomial(2, 0.3, size=(len(table), 5)).astype(float)
    G[:, 3] = 1.0  # monomorphic: kept as a row, not fitted
    G[:2, 4] = np.nan  # mean-imputed
    y = table.y.to_numpy() + 0.3 * G[:, 0]
    blocks = random_blocks("(1 + x | g) + (1 | h)", table)  # blocked slope factor + a dense crossed factor
    result = jaxlmm.scan(y, G, table.x.to_numpy(), random=blocks, chunk_size=4, max_missing=0.05)
    cols = result.columns
    assert list(cols["status"]) == ["ok", "ok", "ok", "monomorphic", "ok"]
    assert np.isnan(cols["beta"][3])
    C = np.c_[np.ones(len(table)), table.x]
    null_ml = fit_mixed(y, C, ["(Intercept)", "x"], blocks, "ML")
    for j in (0, 1, 2, 4):
        x = np.where(np.isnan(G[:, j]), np.nanmean(G[:, j]), G[:, j])
        reml = fit_mixed(y, np.c_[C, x], ["(Intercept)", "x", "v"], blocks, "REML")
        ml = fit_mixed(y, np.c_[C, x], ["(Intercept)", "x", "v"], blocks, "ML")
        np.testing.assert_allclose(cols["beta"][j], reml.fixef[-1], rtol=1e-6)
        np.testing.assert_allclose(cols["se"][j], reml.se[-1], rtol=1e-6)
        np.testing.assert_allclose(cols["logl_remle"][j], reml.loglik, rtol=1e-9)
        np.testing.assert_allclose(cols["logl_mle"][j], ml.loglik, rtol=1e-9)
        lrt = null_ml.criterion - ml.criterion
        np.testing.assert_allclose(cols["p_lrt"][j], math.erfc(math.sqrt(lrt / 2)), rtol=1e-5)
        np.testing.assert_allclose(cols["wald"][j], (reml.fixef[-1] / reml.se[-1]) ** 2, rtol=1e-6)
    assert cols["p_lrt"][0] < 0.01 and cols["converged"][[0, 1, 2, 4]].all()
