"""Manhattan and QQ plots of an association table (PNG, matplotlib's non-interactive Agg backend).

Both plot the Wald p-values of the rows with status "ok". Manhattan: -log10 p against genome position, chromosomes
side by side in alternating colours (variants without a position, ps = -9, are left out and counted in the title), a dashed line at the Bonferroni threshold 0.05 / (variants tested). QQ:
observed against expected -log10 p with a 95% pointwise band (beta order statistics) and lambda_GC in the title.
"""

from __future__ import annotations

import numpy as np

from .io.results import genomic_inflation
from .validate import InputError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise InputError("plots need matplotlib: pip install 'jaxlmm[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _chromosome_order(chrom: np.ndarray) -> list:
    def key(c):
        return (0, int(c), "") if str(c).isdigit() else (1, 0, str(c))

    return sorted(set(chrom), key=key)


def manhattan(results, path, p_column: str = "p_wald") -> str:
    """Write a Manhattan plot of ``results`` (a DataFrame with chr, ps and p_column) to ``path``; returns path."""
    plt = _pyplot()
    tested = results[results["status"] == "ok"]
    ok = tested[tested["ps"] >= 0]  # unknown positions (-9) have no place on the genome axis
    p = ok[p_column].to_numpy(dtype=float)
    chrom = ok["chr"].astype(str).to_numpy()
    position = ok["ps"].to_numpy(dtype=float)
    figure, axes = plt.subplots(figsize=(11, 4), dpi=110)
    offset, ticks, labels = 0.0, [], []
    for k, c in enumerate(_chromosome_order(chrom)):
        on = chrom == c
        x = position[on] - position[on].min() + offset if on.any() else position[on]
        axes.scatter(x, -np.log10(p[on]), s=4, color=("#1f4e79", "#7aa6c2")[k % 2], linewidths=0)
        ticks.append(offset + (x.max() - offset) / 2 if on.any() else offset)
        labels.append(c)
        offset = (x.max() if on.any() else offset) + max(1.0, np.ptp(position) * 0.01)
    if len(tested):
        axes.axhline(-np.log10(0.05 / len(tested)), color="#b22222", linestyle="--", linewidth=0.8,
                     label=f"Bonferroni 0.05 / {len(tested)}")
        axes.legend(loc="upper right", frameon=False, fontsize=8)
    axes.set_xticks(ticks, labels, fontsize=7)
    axes.set_xlabel("chromosome")
    axes.set_ylabel(f"-log10 {p_column}")
    unplaced = len(tested) - len(ok)
    axes.set_title(f"Manhattan plot ({len(tested)} variants tested"
                   + (f"; {unplaced} without a position not shown)" if unplaced else ")"))
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return str(path)


def _order_statistic_band(ranks: np.ndarray, m: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise quantiles (1-level)/2 and (1+level)/2 of the rank-th smallest of m uniform p-values, which is
    Beta(rank, m - rank + 1): bisection on its CDF (jax's regularized incomplete beta), in log p."""
    import jax
    from jax.scipy.special import betainc

    def quantile(q):
        low, high = np.full(ranks.shape, -800.0), np.zeros(ranks.shape)  # log p brackets
        with jax.enable_x64(True):
            for _ in range(80):
                mid = (low + high) / 2
                below = np.asarray(betainc(ranks, m - ranks + 1.0, np.exp(mid))) < q
                low, high = np.where(below, mid, low), np.where(below, high, mid)
        return np.exp((low + high) / 2)

    return quantile((1 - level) / 2), quantile((1 + level) / 2)


def qq(results, path, p_column: str = "p_wald") -> str:
    """Write a QQ plot of ``results[p_column]`` (rows with status ok) to ``path``; returns path."""
    plt = _pyplot()
    p = np.sort(results.loc[results["status"] == "ok", p_column].to_numpy(dtype=float))
    p = p[np.isfinite(p)]
    m = p.size
    figure, axes = plt.subplots(figsize=(5, 5), dpi=110)
    if m:
        ranks = np.arange(1, m + 1, dtype=float)
        expected = -np.log10(ranks / (m + 1))
        shown = np.unique(np.r_[np.geomspace(1, m, min(m, 200)).round().astype(int) - 1])
        low, high = _order_statistic_band(ranks[shown], m)
        axes.fill_between(expected[shown], -np.log10(low), -np.log10(high), color="#d9d9d9", linewidth=0,
                          label="95% band")
        axes.plot([0, expected[0]], [0, expected[0]], color="#b22222", linewidth=0.8)
        axes.scatter(expected, -np.log10(np.maximum(p, 1e-300)), s=5, color="#1f4e79", linewidths=0)
        axes.legend(loc="upper left", frameon=False, fontsize=8)
    axes.set_xlabel("expected -log10 p")
    axes.set_ylabel(f"observed -log10 {p_column}")
    axes.set_title(f"QQ plot: {m} variants, lambda_GC = {genomic_inflation(p):.3f}")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return str(path)
