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


# ----------------------------------------------------------------------------------------------------------------
# general mixed models (jaxlmm.lmer)


def mixed_to_dict(fit) -> dict:
    """Plain-Python view of a :class:`~jaxlmm.mixed.MixedFit`, the same keys as :func:`to_dict` where they apply.

    varcomp: lme4 block name -> variance for one-coefficient blocks, "<block>.<coefficient>" otherwise (lme4's theta
    names), plus "residual"; varcorr: the rows of lme4's ``as.data.frame(VarCorr(fit))``; ranef / ranef_var:
    group -> level -> value (one coefficient) or -> {coefficient: value}; fixef_ci: Wald 95% intervals.
    """
    from .lmer import confint, ranef, varcorr

    rows = varcorr(fit)
    counts = {}
    for row in rows:
        if row.var1 is not None and row.var2 is None:
            counts[row.grp] = counts.get(row.grp, 0) + 1
    varcomp = {(r.grp if counts[r.grp] == 1 else f"{r.grp}.{r.var1}"): r.vcov
               for r in rows if r.var1 is not None and r.var2 is None}
    effects, variances = {}, {}
    for group, eff in ranef(fit).items():
        one = len(eff.columns) == 1
        effects[group] = {str(lv): (float(v[0]) if one else dict(zip(eff.columns, map(float, v))))
                          for lv, v in zip(eff.levels, eff.values)}
        variances[group] = {str(lv): (float(c[0, 0]) if one else dict(zip(eff.columns, map(float, np.diag(c)))))
                            for lv, c in zip(eff.levels, eff.condvar)}
    out = {
        "method": fit.method, "formula": fit.formula, "n": fit.n,
        "fixef": dict(zip(fit.fixef_names, map(float, fit.fixef))),
        "se": dict(zip(fit.fixef_names, map(float, fit.se))),
        "fixef_ci": {name: [float(lo), float(hi)] for name, (lo, hi) in zip(fit.fixef_names, confint(fit))},
        "varcomp": {**varcomp, "residual": float(fit.residual_variance)},
        "varcorr": [row._asdict() for row in rows],
        "theta": [float(t) for t in fit.theta],
        "loglik": float(fit.loglik),
        "ranef": effects, "ranef_var": variances,
        "pve": {name: float(v) for name, v in fit.pve.items()},
        "singular": bool(fit.singular), "converged": bool(fit.converged), "iterations": int(fit.iterations),
        "messages": list(fit.messages),
    }
    out["reml_criterion" if fit.method == "REML" else "deviance"] = float(fit.criterion)
    return out


def mixed_summary(fit) -> str:
    """lme4-style ``summary()`` text of a :class:`~jaxlmm.mixed.MixedFit`."""
    from .lmer import varcorr

    how = "REML" if fit.method == "REML" else "maximum likelihood"
    lines = [f"Linear mixed model fit by {how} (jaxlmm, penalized least squares)"]
    if fit.formula:
        lines.append(f"Formula: {fit.formula}")
    lines.append("")
    npar = fit.p + fit.n_theta + 1
    if fit.method == "REML":
        lines.append(f"REML criterion at convergence: {fit.criterion:.4f}")
    else:
        aic, bic = fit.criterion + 2 * npar, fit.criterion + math.log(fit.n) * npar
        lines.append(f"{'AIC':>10} {'BIC':>10} {'logLik':>10} {'deviance':>10} {'df.resid':>9}")
        lines.append(f"{aic:10.4f} {bic:10.4f} {fit.loglik:10.4f} {fit.criterion:10.4f} {fit.n - npar:9d}")
    lines += ["", "Scaled residuals:", f"{'Min':>9} {'1Q':>9} {'Median':>9} {'3Q':>9} {'Max':>9}"]
    scaled = fit.residuals / math.sqrt(fit.residual_variance)
    lines.append(" ".join(f"{q:9.4f}" for q in np.quantile(scaled, [0, 0.25, 0.5, 0.75, 1])))
    lines += ["", "Random effects:"]
    rows = varcorr(fit)
    table, previous = [], None
    for row in rows:
        if row.var2 is not None:
            continue
        corrs = [r.sdcor for r in rows if r.grp == row.grp and r.var2 is not None and r.var2 == row.var1]
        shown = row.grp if row.grp != previous else ""
        table.append((shown, row.var1 or "", row.vcov, row.sdcor, " ".join(f"{c:5.2f}" for c in corrs)))
        previous = row.grp
    width = max(8, *(len(t[0]) for t in table))
    name_width = max(11, *(len(t[1]) for t in table))
    lines.append(f" {'Groups':<{width}} {'Name':<{name_width}} {'Variance':>10} {'Std.Dev.':>9} Corr")
    for grp, name, var, sd, corr in table:
        lines.append(f" {grp:<{width}} {name:<{name_width}} {var:10.4g} {sd:9.4g} {corr}".rstrip())
    counts = {}
    for group, levels in zip(fit.groups, fit.levels):
        counts.setdefault(group, len(levels))
    lines.append(f"Number of obs: {fit.n}, groups:  " + "; ".join(f"{g}, {c}" for g, c in counts.items()))
    lines += ["", "Fixed effects:"]
    width = max(11, *(len(n) for n in fit.fixef_names))
    lines.append(f"{'':<{width}} {'Estimate':>10} {'Std. Error':>10} {'t value':>8}")
    for name, b, s, t in zip(fit.fixef_names, fit.fixef, fit.se, fit.tvalue):
        lines.append(f"{name:<{width}} {b:10.4g} {s:10.4g} {t:8.3f}")
    lines.append("")
    status = "converged" if fit.converged else "NOT converged"
    lines.append(f"Optimizer: L-BFGS (optax) over lme4's theta (log diagonals), {fit.iterations} iterations, {status}")
    lines += list(fit.messages)
    return "\n".join(lines)
