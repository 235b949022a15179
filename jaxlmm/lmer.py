"""lme4's front door for tables and the functions over its results: ``lmer``, ``fixef``, ``ranef``, ``varcorr``,
``predict``, ``anova``, ``confint``.

    fit = lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)            # REML; method="ML" for ML
    fit = lmer("y ~ x + (1 | family)", table, kinship=K)                    # a kinship term beside the factors

Formulas follow lme4 (see :mod:`jaxlmm.reterms` for the random-effect terms; the fixed part is built by formulaic with
R's conventions). Results are :class:`jaxlmm.mixed.MixedFit` NamedTuples; everything here is a function of them.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import numpy as np

from .mixed import MixedFit, fit_mixed
from .reterms import (
    blocks_from_frame,
    group_labels,
    kinship_block,
    order_blocks,
    split_random,
    term_columns,
)
from .validate import InputError


class Design(NamedTuple):
    """What a fit was made from, kept for predict and ML refits: y (n,), X (n, p), the blocks, formulaic's model spec
    of the fixed part (None when fitted from arrays)."""

    y: np.ndarray
    X: np.ndarray
    blocks: list
    fixed_spec: object


def lmer(formula: str, data, method: str = "REML", *, kinship=None, kinship_ids=None, max_iter: int = 200) -> MixedFit:
    """Fit an lme4 formula to a table (pandas DataFrame or dict of columns) by REML or ML.

    kinship:     optional (n, n) relationship matrix over the rows of ``data``: adds a term ``g ~ N(0, s2_g K)``
                 named "kinship" (its BLUPs are the genetic values per row, labelled by ``kinship_ids`` or 1..n)
    """
    import pandas as pd
    from formulaic import model_matrix

    if method not in ("REML", "ML"):
        raise InputError(f"method must be 'REML' or 'ML', got {method!r}")
    if formula.count("~") != 1:
        raise InputError(f"formula {formula!r} must have the form 'response ~ terms'")
    lhs, rhs = (part.strip() for part in formula.split("~"))
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    fixed, specs = split_random(rhs)
    if not specs and kinship is None:
        raise InputError(f"formula {formula!r} has no random-effect term such as (1|g), and no kinship was given")
    if lhs not in frame.columns:
        raise InputError(f"response column {lhs!r} not found in the data (columns: {list(frame.columns)})")
    needed = [lhs, *{f for s in specs for f in s.factors if f in frame.columns}]
    na_rows = frame[needed].isna().any(axis=1).to_numpy()
    if na_rows.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(na_rows)[:5])
        raise InputError(f"missing values in {needed} at data row(s) {rows}")
    try:
        matrix = model_matrix(fixed, frame, na_action="raise")
    except Exception as err:  # formulaic raises several types for unknown columns and bad syntax
        raise InputError(f"cannot build the fixed effects {fixed!r}: {err}") from None
    names = tuple("(Intercept)" if c == "Intercept" else str(c) for c in matrix.columns)
    y = pd.to_numeric(frame[lhs], errors="coerce").to_numpy(dtype=float)
    if np.isnan(y).any():
        raise InputError(f"response {lhs!r} is not numeric at data row {np.flatnonzero(np.isnan(y))[0] + 1}")
    X = np.asarray(matrix, dtype=float)
    blocks = blocks_from_frame(specs, frame)
    if kinship is not None:
        K = np.asarray(kinship, dtype=float)
        if K.shape != (y.size, y.size) or not np.all(np.isfinite(K)):
            raise InputError(f"kinship must be a finite ({y.size}, {y.size}) matrix over the data rows, got {K.shape}")
        blocks.append(kinship_block(K, kinship_ids))
    blocks = order_blocks(blocks)  # the fit's order, so predict pairs blocks with fit.ranef
    _check_sizes(y.size, X, names, blocks)
    design = Design(y, X, blocks, matrix.model_spec)
    return fit_mixed(y, X, names, blocks, method, max_iter=max_iter, formula=formula, model=design)


def _check_sizes(n: int, X: np.ndarray, names, blocks) -> None:
    """lme4's checks: fewer fixed effects than observations, full column rank, each factor with fewer levels than
    observations, no more random effects per term than observations."""
    if X.shape[1] >= n:
        raise InputError(f"{X.shape[1]} fixed effects for {n} observations")
    if np.linalg.matrix_rank(X) < X.shape[1]:
        raise InputError(f"the fixed-effect design is rank deficient (columns {list(names)})")
    for block in blocks:
        if block.factor is None and (len(block.levels) >= n or len(block.levels) * len(block.columns) >= n):
            raise InputError(f"grouping factor {block.group!r}: {len(block.levels)} levels x {len(block.columns)} "
                             f"coefficients is not fewer than the {n} observations")


def refit(fit: MixedFit, method: str) -> MixedFit:
    """The same model fitted by ``method`` ("REML" or "ML") on the same data."""
    design = _design(fit)
    return fit_mixed(design.y, design.X, fit.fixef_names, design.blocks, method, formula=fit.formula, model=design)


def _design(fit: MixedFit) -> Design:
    if not isinstance(fit.model, Design):
        raise InputError("this fit does not keep its data (fit it with jaxlmm.lmer)")
    return fit.model


# ----------------------------------------------------------------------------------------------------------------
# accessors


def fixef(fit: MixedFit) -> dict:
    """name -> fixed-effect estimate."""
    return dict(zip(fit.fixef_names, map(float, fit.fixef)))


class GroupEffects(NamedTuple):
    """Conditional modes of one grouping factor (lme4's ``ranef(fit, condVar=TRUE)[[group]]``).

    levels: (l,) labels; columns: (k,) coefficient names; values: (l, k); condvar: (l, k, k) conditional covariances
    (block-diagonal across the blocks of an uncorrelated term)
    """

    levels: tuple
    columns: tuple
    values: np.ndarray
    condvar: np.ndarray


def ranef(fit: MixedFit) -> dict:
    """group -> :class:`GroupEffects`; blocks of one factor (``(x||g)``) are merged as lme4 shows them."""
    out = {}
    for group, columns, levels, values, condvar in zip(fit.groups, fit.columns, fit.levels, fit.ranef,
                                                      fit.ranef_condvar):
        if group in out:
            prev = out[group]
            k0, k1 = len(prev.columns), len(columns)
            merged = np.zeros((len(levels), k0 + k1, k0 + k1))
            merged[:, :k0, :k0], merged[:, k0:, k0:] = prev.condvar, condvar
            out[group] = GroupEffects(levels, prev.columns + columns, np.concatenate([prev.values, values], 1), merged)
        else:
            out[group] = GroupEffects(levels, columns, values, condvar)
    return out


class VarCorrRow(NamedTuple):
    """One row of lme4's ``as.data.frame(VarCorr(fit))``: a variance (var2 None) or a covariance.

    grp: block name ("Subject", "Subject.1" for a second block of the same factor, "Residual"); vcov: variance or
    covariance; sdcor: standard deviation or correlation
    """

    grp: str
    var1: str | None
    var2: str | None
    vcov: float
    sdcor: float


def varcorr(fit: MixedFit) -> tuple:
    """Variances, covariances and correlations of the random effects, lme4's order and names."""
    rows, seen = [], {}
    for group, columns, S in zip(fit.groups, fit.columns, fit.covariances):
        count = seen.get(group, 0)
        seen[group] = count + 1
        name = group if count == 0 else f"{group}.{count}"
        sd = np.sqrt(np.diag(S))
        rows += [VarCorrRow(name, c, None, float(S[a, a]), float(sd[a])) for a, c in enumerate(columns)]
        for a in range(len(columns)):
            for b in range(a + 1, len(columns)):
                corr = S[b, a] / (sd[a] * sd[b]) if sd[a] * sd[b] > 0 else float("nan")
                rows.append(VarCorrRow(name, columns[a], columns[b], float(S[b, a]), float(corr)))
    rows.append(VarCorrRow("Residual", None, None, fit.residual_variance, math.sqrt(fit.residual_variance)))
    return tuple(rows)


def confint(fit: MixedFit, level: float = 0.95) -> np.ndarray:
    """Wald intervals for the fixed effects, (p, 2): ``b -+ z_{(1+level)/2} se`` (lme4's ``method = "Wald"``)."""
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return np.stack([fit.fixef - z * fit.se, fit.fixef + z * fit.se], axis=1)


# ----------------------------------------------------------------------------------------------------------------
# predictions


def predict(fit: MixedFit, newdata=None, random: bool = True) -> np.ndarray:
    """Predictions ``X b + Z B`` (``random=True``, lme4's default) or ``X b`` (``random=False``, ``re.form = NA``).

    newdata: table with the model's columns, or None for the fitted data. Levels not seen in the fit contribute 0
    (the population prediction, lme4's ``allow.new.levels = TRUE``); a kinship term never contributes to new rows.
    """
    design = _design(fit)
    if newdata is None:
        return fit.fitted.copy() if random else design.X @ fit.fixef
    import pandas as pd

    frame = newdata if isinstance(newdata, pd.DataFrame) else pd.DataFrame(dict(newdata))
    try:
        X = np.asarray(design.fixed_spec.get_model_matrix(frame, na_action="raise"), dtype=float)
    except Exception as err:  # formulaic's errors for a missing column or unseen factor level
        raise InputError(f"cannot build the fixed effects for newdata: {err}") from None
    out = X @ fit.fixef
    if not random:
        return out
    for block, mode in zip(design.blocks, fit.ranef):
        if block.factor is not None:
            continue
        spec, selection = block.spec
        values = term_columns(spec, frame)[0][:, list(selection)]
        index = {level: j for j, level in enumerate(block.levels)}
        codes = np.array([index.get(label, -1) for label in group_labels(frame, spec.factors)])
        known = codes >= 0
        out[known] += np.sum(values[known] * mode[codes[known]], axis=1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# model comparison


class Anova(NamedTuple):
    """Likelihood-ratio tests between nested models, lme4's ``anova(m0, m1, ...)`` (models sorted by npar).

    formulas: (M,); npar: (M,) fixed effects + theta + 1; aic, bic, loglik, deviance: (M,) of the ML fits;
    chisq, df, p: (M,) the test of each model against the previous one (nan for the first);
    refitted: True when REML fits were refitted by ML first (as lme4 does)
    """

    formulas: tuple
    npar: np.ndarray
    aic: np.ndarray
    bic: np.ndarray
    loglik: np.ndarray
    deviance: np.ndarray
    chisq: np.ndarray
    df: np.ndarray
    p: np.ndarray
    refitted: bool


def anova(*fits: MixedFit) -> Anova:
    """LRT of nested models fitted to the same observations. REML fits are refitted by ML first ("refitting model(s)
    with ML (instead of REML)", as lme4 says): REML criteria of models with different fixed effects do not compare."""
    import jax
    import jax.scipy.special as jsp

    if len(fits) < 2:
        raise InputError("anova needs at least two fits")
    if len({f.n for f in fits}) != 1:
        raise InputError(f"models were fitted to different numbers of observations: {[f.n for f in fits]}")
    refitted = any(f.method == "REML" for f in fits)
    ml = sorted((refit(f, "ML") if f.method == "REML" else f for f in fits), key=lambda f: f.p + f.n_theta)
    npar = np.array([f.p + f.n_theta + 1 for f in ml])
    deviance = np.array([f.criterion for f in ml])
    chisq = np.concatenate([[np.nan], np.maximum(deviance[:-1] - deviance[1:], 0.0)])
    df = np.concatenate([[np.nan], np.diff(npar).astype(float)])
    with jax.enable_x64(True):  # chi-square(df) tail in float64
        p = np.array([np.nan] + [float(jsp.gammaincc(d / 2.0, c / 2.0)) if d > 0 else np.nan
                                 for c, d in zip(chisq[1:], df[1:])])
    n = ml[0].n
    return Anova(tuple(f.formula for f in ml), npar, deviance + 2 * npar, deviance + math.log(n) * npar,
                 -deviance / 2.0, deviance, chisq, df, p, refitted)
