"""Memory pre-flight: estimate a scan's peak memory before allocating, and stop early when it exceeds a limit.

Estimate (bytes, float64 = 8 bytes), n_all samples in the genotype file, n analyzed, c covariates, B chunk size:

* kinship: n_all^2 (the matrix read or built; symmetrized and centred in place) + n^2 when a subset of the
  samples is analyzed (the analyzed submatrix); with LOCO the whole-genome sum, the per-chromosome sums held at
  once (all of them, or as many as fit in :data:`jaxlmm.kinship.LOCO_HELD_BYTES`) and the leave-one-out kinship,
  n_all^2 each;
* decomposition: LAPACK's workspace, 2 n^2, for a kinship of at least
  :data:`jaxlmm.structure.IN_PLACE_MIN_SIZE` samples, decomposed in place (its memory then holds the
  eigenvectors, and U' goes to the device when the workspace is gone); numpy's copy of its input and its output
  besides, 4 n^2, for a smaller one;
* a chunk: the decoded, imputed and padded genotypes and their rotation, ~6 n B, plus the per-variant statistics
  of the batched fits, ~B (c + 3)^2 * 64; three chunks are in flight (on CPU two are fitted at once while the
  next is read).

The figures are deliberately simple upper bounds of what jaxlmm itself holds (the Python/JAX runtime, ~0.5 GiB, is
added); they are checked against ``--max-memory`` only, never against what the machine happens to have free.
"""

from __future__ import annotations

from .validate import InputError

GIB = 2.0**30
RUNTIME_BYTES = 0.5 * GIB


def peak_bytes(n_all: int, n: int, covariates: int, chunk: int, chromosomes: int = 0) -> dict:
    """Estimated bytes by part (see module docstring); chromosomes > 0 means LOCO pieces."""
    from .kinship import loco_held
    from .structure import IN_PLACE_MIN_SIZE

    matrices = 2 + min(chromosomes, loco_held(n_all)) if chromosomes else 1
    kinship = 8.0 * (n_all**2 * matrices + (n**2 if n < n_all else 0))
    decomposition = 8.0 * (2 if n >= IN_PLACE_MIN_SIZE else 4) * n**2
    chunks = 3 * (8.0 * 6 * n * chunk + 64.0 * chunk * (covariates + 3) ** 2)
    return {"runtime": RUNTIME_BYTES, "kinship": kinship, "decomposition": decomposition, "chunks": chunks}


def check_memory(config, inputs, runs: int) -> None:
    """Raise before any large allocation when the estimate exceeds ``config.max_memory`` GiB, suggesting a chunk
    size that fits when one does."""
    if config.max_memory is None:
        return
    limit = config.max_memory * GIB
    n_all, n = inputs.genotypes.shape[0], int(inputs.analyzed.sum())
    covariates = 1 + (0 if inputs.covariates is None else inputs.covariates.shape[1])
    chromosomes = len(set(map(str, inputs.bim.chrom))) if config.loco else 0
    parts = peak_bytes(n_all, n, covariates, config.chunk, chromosomes)
    if config.groups is not None:
        parts["kinship"] = parts["decomposition"] = 0.0
    total = sum(parts.values())
    if total <= limit:
        return
    fixed = total - parts["chunks"]
    per_variant = parts["chunks"] / config.chunk
    fitting = int((limit - fixed) // per_variant) if limit > fixed else 0
    detail = ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items())
    advice = (f"--chunk {fitting} would fit" if fitting >= 1 else
              "no chunk size fits: the kinship and its decomposition alone exceed it (fewer samples, --groups, or "
              "a machine with more memory)")
    raise InputError(f"this scan needs about {total / GIB:.2f} GiB ({detail} GiB), over --max-memory "
                     f"{config.max_memory:g} GiB; {advice}")
