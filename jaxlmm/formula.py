"""lme4-style formulas for tables: ``y ~ x1 + x2 + (1|g)``.

Random intercept terms ``(1|g)`` are taken out of the right-hand side; the rest is the fixed part, built by
formulaic (R's conventions: intercept by default, ``0 +`` or ``- 1`` to drop it, factors in treatment coding,
``a:b`` interactions, ``I(x**2)``). Other random-effect forms (``(x|g)``, ``(1|a/b)``) are fitted by
:func:`jaxlmm.lmer.lmer`; here they are rejected with a message saying so.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .fit import FitResult, fit_terms
from .reterms import split_random
from .structure import group_term
from .validate import InputError

_INTERCEPT_ONLY = re.compile(r"^\s*1\s*$")
_NAME = re.compile(r"^\s*([A-Za-z_.][A-Za-z0-9_.]*)\s*$")


class ParsedFormula(NamedTuple):
    """response: column name; fixed: formulaic right-hand side; groups: grouping columns of ``(1|g)`` terms."""

    response: str
    fixed: str
    groups: tuple


def parse(formula: str) -> ParsedFormula:
    """Split ``response ~ fixed + (1|g) + ...`` into its parts."""
    if formula.count("~") != 1:
        raise InputError(f"formula {formula!r} must have the form 'response ~ terms'")
    lhs, rhs = formula.split("~")
    match = _NAME.match(lhs)
    if not match:
        raise InputError(f"formula {formula!r}: the response must be a single column name, got {lhs.strip()!r}")
    fixed, specs = split_random(rhs)
    for spec in specs:
        if not (spec.correlated and _INTERCEPT_ONLY.match(spec.expr) and len(spec.factors) == 1):
            raise InputError(f"random-effect term ({spec.expr}{'|' if spec.correlated else '||'}{spec.group}) is not "
                             "supported by fit_formula: only (1|g) random intercepts; use jaxlmm.lmer.lmer")
    groups = [spec.group for spec in specs]
    if not groups:
        raise InputError(f"formula {formula!r} has no random-effect term such as (1|g)")
    return ParsedFormula(match.group(1), fixed, tuple(groups))


def model_frame(parsed: ParsedFormula, data) -> tuple[np.ndarray, np.ndarray, list[str], list]:
    """Response (n,), fixed design (n, p), its column names, and the grouping terms, from a table.

    data: a pandas DataFrame or a mapping of column name -> values.
    """
    import pandas as pd
    from formulaic import model_matrix

    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    needed = [parsed.response, *parsed.groups]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise InputError(f"column(s) {missing} not found in the data (columns: {list(frame.columns)})")
    na_rows = frame[needed].isna().any(axis=1).to_numpy()
    if na_rows.any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(na_rows)[:5])
        raise InputError(f"missing values in {needed} at data row(s) {rows}")
    try:
        matrix = model_matrix(parsed.fixed, frame, na_action="raise")
    except Exception as err:  # formulaic raises several types for unknown columns and bad syntax
        raise InputError(f"cannot build the fixed effects {parsed.fixed!r}: {err}") from None
    names = ["(Intercept)" if c == "Intercept" else str(c) for c in matrix.columns]
    y = pd.to_numeric(frame[parsed.response], errors="coerce").to_numpy(dtype=float)
    if np.isnan(y).any():
        bad = np.flatnonzero(np.isnan(y))[0]
        raise InputError(f"response {parsed.response!r} is not numeric at data row {bad + 1}")
    terms = [group_term(frame[g].astype(str).to_numpy() if frame[g].dtype == object else frame[g].to_numpy(), name=g)
             for g in parsed.groups]
    return y, np.asarray(matrix, dtype=float), names, terms


def fit_formula(formula: str, data, method: str = "REML", variance_ratios=None) -> FitResult:
    """Fit an lme4-style formula to a table, e.g. ``fit_formula("height ~ variant1 + (1|family)", df)``."""
    parsed = parse(formula)
    y, X, names, terms = model_frame(parsed, data)
    return fit_terms(y, X, names, terms, method=method, variance_ratios=variance_ratios)
