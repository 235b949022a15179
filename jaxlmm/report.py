"""Presenting a :class:`~jaxlmm.fit.FitResult`: lme4-like summary text and a JSON-ready dict."""

from __future__ import annotations

import math

import numpy as np

from .fit import FitResult


def to_dict(result: FitResult) -> dict:
    """Plain-Python view of a fit; keys as documented for ``jaxlmm fit --json``.

    fixef, se: name -> value; varcomp: term -> variance plus "residual"; reml_criterion (REML fits) or deviance
    (ML fits); loglik; ranef / ranef_var: term -> level -> BLUP / conditional variance; pve; singular; converged.
    """
    out = {
        "method": result.method,
        "n": result.n,
        "fixef": dict(zip(result.fixef_names, map(float, result.fixef))),
        "se": dict(zip(result.fixef_names, map(float, result.se))),
        "varcomp": {**dict(zip(result.term_names, map(float, result.variances))),
                    "residual": float(result.residual_variance)},
        "loglik": float(result.loglik),
        "ranef": {name: {str(level): float(v) for level, v in zip(levels, values)}
                  for name, levels, values in zip(result.term_names, result.ranef_levels, result.ranef)},
        "ranef_var": {name: {str(level): float(v) for level, v in zip(levels, values)}
                      for name, levels, values in zip(result.term_names, result.ranef_levels, result.ranef_condvar)},
        "pve": {name: float(v) for name, v in result.pve.items()},
        "heritability": float(result.heritability),
        "singular": bool(np.any(result.singular)),
        "converged": bool(result.converged),
        "identified": bool(result.identified),
        "iterations": int(result.iterations),
        "messages": list(result.messages),
    }
    out["reml_criterion" if result.method == "REML" else "deviance"] = float(result.criterion)
    return out


def summary(result: FitResult, formula: str | None = None) -> str:
    """lme4-style summary text of a fit."""
    lines = []
    how = "REML" if result.method == "REML" else "maximum likelihood"
    lines.append(f"Linear mixed model fit by {how} (jaxlmm)")
    if formula:
        lines.append(f"Formula: {formula}")
    lines.append("")
    if result.method == "REML":
        lines.append(f"REML criterion at convergence: {result.criterion:.4f}")
    else:
        aic = result.criterion + 2 * (result.p + len(result.term_names) + 1)
        lines.append("     AIC   logLik deviance")
        lines.append(f"{aic:8.1f} {result.loglik:8.1f} {result.criterion:8.1f}")
    lines.append("")
    lines.append("Random effects:")
    rows = [(name, "(Intercept)", v) for name, v in zip(result.term_names, result.variances)]
    rows.append(("Residual", "", result.residual_variance))
    width = max(8, *(len(r[0]) for r in rows))
    lines.append(f" {'Groups':<{width}} {'Name':<11} {'Variance':>10} {'Std.Dev.':>9}")
    for name, what, v in rows:
        lines.append(f" {name:<{width}} {what:<11} {v:10.4g} {math.sqrt(max(v, 0.0)):9.4g}")
    counts = ", ".join(f"{name}, {len(levels)}" for name, levels in zip(result.term_names, result.ranef_levels))
    lines.append(f"Number of obs: {result.n}, groups:  {counts}")
    lines.append("")
    lines.append("Fixed effects:")
    width = max(11, *(len(n) for n in result.fixef_names))
    lines.append(f"{'':<{width}} {'Estimate':>10} {'Std. Error':>10} {'t value':>8}")
    for name, b, s, t in zip(result.fixef_names, result.fixef, result.se, result.tvalue):
        lines.append(f"{name:<{width}} {b:10.4g} {s:10.4g} {t:8.3f}")
    lines.append("")
    lines.append("Variance explained (PVE): " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.pve.items()))
    status = "converged" if result.converged else "NOT converged"
    lines.append(f"Optimizer: L-BFGS (optax) over log variance ratios, {result.iterations} iterations, {status}")
    for message in result.messages:
        lines.append(message)
    return "\n".join(lines)
