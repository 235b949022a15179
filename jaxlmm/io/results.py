"""Writing scan results: GEMMA-style association table and a run log."""

from __future__ import annotations

import os
import tempfile

import numpy as np

# GEMMA's -lmm 4 columns, then ours
GEMMA_COLUMNS = ("chr", "rs", "ps", "n_miss", "allele1", "allele0", "af", "beta", "se", "logl_H1", "l_remle",
                 "l_mle", "p_wald", "p_lrt", "p_score")
EXTRA_COLUMNS = ("s2_g", "s2_e", "logl_remle", "logl_mle", "wald", "pve", "converged", "iterations", "status")


def genomic_inflation(p_values: np.ndarray) -> float:
    """lambda_GC: median chi-square(1) statistic of the p-values over its expected median 0.4549364."""
    from jax.scipy.special import ndtri

    p = p_values[np.isfinite(p_values)]
    if p.size == 0:
        return float("nan")
    z = float(ndtri(float(np.median(p)) / 2.0))  # chi-square(1) quantile with upper tail p is z^2
    return z * z / 0.45493642311957283


def write_assoc(path, columns: dict, bim) -> int:
    """Write the association table atomically (temporary file, then rename). Returns the number of rows."""
    rows = len(columns["variant"])
    table = {
        "chr": np.asarray(bim.chrom), "rs": columns["variant"], "ps": np.asarray(bim.pos),
        "n_miss": columns["n_miss"], "allele1": np.asarray(bim.allele1), "allele0": np.asarray(bim.allele0),
        "af": columns["af"], "beta": columns["beta"], "se": columns["se"], "logl_H1": columns["logl_H1"],
        "l_remle": columns["lambda_remle"], "l_mle": columns["lambda_mle"], "p_wald": columns["p_wald"],
        "p_lrt": columns["p_lrt"], "p_score": columns["p_score"],
        **{k: columns[k] for k in EXTRA_COLUMNS},
    }
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as handle:
        handle.write("\t".join(table) + "\n")
        for i in range(rows):
            handle.write("\t".join(_format(table[k][i]) for k in table) + "\n")
        temporary = handle.name
    os.replace(temporary, path)
    return rows


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.6e}"
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    return str(value)
