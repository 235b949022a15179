"""The seed example end to end: one lme4-style model per variant, then all variants together."""

from __future__ import annotations

from .datasets import seed_data
from .fit import FitResult
from .formula import fit_formula

SEED_FULL_MODEL_RATIO = 0.2314  # family / residual variance at the point lme4 stopped for the seed's full model


def per_variant_table(data: dict) -> list[dict]:
    """The seed's ``pve_results_single_variants``: ``height ~ variantj + (1|family)`` for each variant."""
    rows = []
    for j in (1, 2, 3):
        fit = fit_formula(f"height ~ variant{j} + (1|family)", data)
        rows.append({"Variant": f"variant{j}", **_pve_row(fit), "beta": float(fit.fixef[1]),
                     "singular": bool(fit.singular[0])})
    return rows


def _pve_row(fit: FitResult) -> dict:
    parts = fit.variance_parts
    total = sum(parts.values())
    return {
        "PVE_Fixed": 100 * fit.pve["fixed"],
        "PVE_Family": 100 * fit.pve["family"],
        "PVE_Residual": 100 * fit.pve["residual"],
        "Fixed_Variance": parts["fixed"],
        "Family_Variance": parts["family"],
        "Residual_Variance": parts["residual"],
        "Total_Variance": total,
    }


def full_model(data: dict, ratio: float | None = None) -> FitResult:
    """``height ~ variant1 + variant2 + variant3 + (1|family)``, optionally at a fixed family/residual ratio."""
    formula = "height ~ variant1 + variant2 + variant3 + (1|family)"
    return fit_formula(formula, data, variance_ratios=None if ratio is None else [ratio])


def render() -> str:
    """The text ``jaxlmm demo`` prints."""
    data = seed_data()
    out = ["Seed example: 5 individuals, 3 variants, 2 families; height ~ variant + (1|family), REML", ""]
    rows = per_variant_table(data)
    header = ["Variant", "PVE_Fixed", "PVE_Family", "PVE_Residual", "Fixed_Variance", "Family_Variance",
              "Residual_Variance", "Total_Variance", "beta", "singular"]
    out.append(" ".join(f"{h:>17}" for h in header))
    for row in rows:
        out.append(" ".join(f"{row[h]:>17}" if isinstance(row[h], str) else f"{row[h]!s:>17}" if isinstance(row[h], bool)
                            else f"{row[h]:17.7g}" for h in header))
    out.append("")
    fit = full_model(data)
    out.append("---------- All variants together: height ~ variant1 + variant2 + variant3 + (1|family) ----------")
    out.append(f"REML criterion: {fit.criterion:.9f}")
    out.extend(fit.messages)
    held = full_model(data, SEED_FULL_MODEL_RATIO)
    out.append(f"At the seed's point on that ridge (family/residual = {SEED_FULL_MODEL_RATIO}):")
    row = _pve_row(held)
    out.append(f"Fixed effects (all variants) PVE: {row['PVE_Fixed']:.2f} %")
    out.append(f"Random effect (family) PVE: {row['PVE_Family']:.2f} %")
    out.append(f"Residual PVE: {row['PVE_Residual']:.2f} %")
    out.append(f"Fixed effects variance: {row['Fixed_Variance']:.4f}")
    out.append(f"Family variance: {row['Family_Variance']:.4f}")
    out.append(f"Residual variance: {row['Residual_Variance']:.4f}")
    out.append(f"Total variance: {row['Total_Variance']:.4f}")
    out.append(f"Heritability (family / (family + residual)): {100 * held.heritability:.2f} %")
    out.append("")
    out.extend(scan_lines(data))
    return "\n".join(out)


def scan_lines(data: dict) -> list[str]:
    """The same three models as one batched scan (GEMMA-style tests; lambda bounded below by 1e-5 as in GEMMA)."""
    import numpy as np

    from .scan import scan

    genotypes = np.column_stack([data[f"variant{j}"] for j in (1, 2, 3)])
    result = scan(data["height"], genotypes, groups=data["family"], min_maf=0.0,
                  variant_names=["variant1", "variant2", "variant3"])
    cols = result.columns
    lines = ["---------- The same models as one batched scan: jaxlmm.scan(height, variants, groups=family) ----------",
             f"{'variant':>9} {'beta':>10} {'se':>10} {'p_wald':>10} {'p_lrt':>10} {'p_score':>10} {'s2_g':>10} "
             f"{'s2_e':>10} {'status':>8}"]
    for j in range(3):
        lines.append(f"{cols['variant'][j]:>9} {cols['beta'][j]:10.6g} {cols['se'][j]:10.4g} {cols['p_wald'][j]:10.4g} "
                     f"{cols['p_lrt'][j]:10.4g} {cols['p_score'][j]:10.4g} {cols['s2_g'][j]:10.4g} "
                     f"{cols['s2_e'][j]:10.4g} {cols['status'][j]:>8}")
    return lines
