"""Grouping-factor scan peers: a loop of lme4 ``lmer(y ~ variant + (1|family))`` fits in R (the seed's method) and a
loop of statsmodels ``MixedLM`` fits, each on a subset of the variants; jaxlmm's ``scan(..., groups=...)`` on all.
Each returns (seconds for the loop alone, beta, se) so rates are per variant and agreement can be checked."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import which

LME4_LOOP = r"""
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
vs <- grep("^v", names(d), value = TRUE)
out <- data.frame(variant = vs, beta = NA_real_, se = NA_real_)
start <- proc.time()[["elapsed"]]
for (j in seq_along(vs)) {
  d$x <- d[[vs[j]]]
  fit <- lmer(y ~ x + (1 | family), data = d, REML = TRUE)
  co <- summary(fit)$coefficients
  out$beta[j] <- co["x", "Estimate"]; out$se[j] <- co["x", "Std. Error"]
}
cat(sprintf("SECONDS %.6f\n", proc.time()[["elapsed"]] - start))
write.csv(out, args[2], row.names = FALSE)
"""


def simulate_groups(n: int = 2000, families: int = 100, m: int = 2000, seed: int = 3):
    """(y (n,), genotypes (n, m) float, family labels (n,)): family effects, variants with family-level drift."""
    rng = np.random.default_rng(seed)
    family = rng.integers(families, size=n)
    p = rng.uniform(0.05, 0.5, size=m)
    local = np.clip(p + rng.normal(scale=0.05, size=(families, m)), 0.01, 0.99)
    genotypes = rng.binomial(2, local[family]).astype(float)
    y = rng.normal(scale=0.8, size=families)[family] + 0.2 * genotypes[:, 0] + rng.normal(size=n)
    return y, genotypes, family


def lme4_loop(y, genotypes, family):
    """(seconds of the R loop, beta, se, peak-memory Measured-free note) or None when Rscript/lme4 is missing."""
    rscript = which("Rscript")
    if rscript is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = pd.DataFrame({"y": y, "family": family, **{f"v{j + 1}": genotypes[:, j]
                                                           for j in range(genotypes.shape[1])}})
        table.to_csv(tmp / "d.csv", index=False)
        (tmp / "loop.R").write_text(LME4_LOOP)
        done = subprocess.run([rscript, str(tmp / "loop.R"), str(tmp / "d.csv"), str(tmp / "out.csv")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None
        seconds = float(done.stdout.split("SECONDS")[1].split()[0])
        out = pd.read_csv(tmp / "out.csv")
    return seconds, out.beta.to_numpy(), out.se.to_numpy()


def statsmodels_loop(y, genotypes, family):
    """(seconds, beta, se) of a loop of REML MixedLM fits, or None when statsmodels is missing."""
    try:
        import warnings

        import statsmodels.api as sm
    except ImportError:
        return None
    beta, se = [], []
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for j in range(genotypes.shape[1]):
            exog = np.c_[np.ones_like(y), genotypes[:, j]]
            fit = sm.MixedLM(y, exog, groups=family).fit(reml=True)
            beta.append(fit.fe_params[1])
            se.append(fit.bse_fe[1])
    return time.perf_counter() - start, np.asarray(beta), np.asarray(se)
