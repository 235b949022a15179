"""Genomic relationship matrices from genotypes, accumulated over variant chunks (bounded memory).

Centered (GEMMA ``-gk 1``): ``K = Xc Xc' / p``, each variant centred by its mean over all samples (missing values
mean-imputed first). Standardized (``-gk 2``): each centred variant also divided by its standard deviation
(population form, denominator n).

Centred kinships of integer genotypes without missing values (PLINK counts) multiply in float32, which is exact for
them; everything else is float64 (see :func:`_integer_chunk_contribution`).
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .genotype_chunks import is_counts, read_genotypes, with_nan
from .validate import InputError


@jax.jit
def _chunk_contribution(chunk, standardize):
    missing = jnp.isnan(chunk)
    counts = jnp.sum(~missing, axis=0)
    means = jnp.sum(jnp.where(missing, 0.0, chunk), axis=0) / jnp.maximum(counts, 1)
    centred = jnp.where(missing, 0.0, chunk - means)
    sd = jnp.sqrt(jnp.mean(centred * centred, axis=0))
    centred = jnp.where(standardize, centred / jnp.where(sd > 0, sd, 1.0), centred)
    return centred @ centred.T


INTEGER_LIMIT = 64  # |genotype| bound of the float32 path ...
INTEGER_COLUMNS = 2048  # ... and its columns per product: 64^2 x 2048 stays below 2^24


@jax.jit
def _integer_chunk_contribution(chunk):
    """Xc Xc' of a chunk (n, k) of integer genotypes without missing values, k <= INTEGER_COLUMNS and
    |x| <= INTEGER_LIMIT.
    X X' runs in float32 and is exact (every product and partial sum is an integer below 2^24, in any order of
    summation; HIGHEST precision keeps GPUs off TF32), at about twice the speed of float64; the centring is added
    in float64 as rank-one terms, ``Xc Xc' = X X' - a 1' - 1 a' + (mu . mu) 1 1'`` with ``a = X mu``."""
    values = chunk.astype(jnp.float64)  # int8 counts travel as they are
    gram = _symmetric_product(chunk.astype(jnp.float32)).astype(jnp.float64)
    means = jnp.mean(values, axis=0)
    a = values @ means
    return gram - a[:, None] - a[None, :] + means @ means


SYMMETRIC_BLOCK_ROWS = 640  # rows per block of the symmetric product (at most SYMMETRIC_BLOCKS blocks)
SYMMETRIC_BLOCKS = 8


def _symmetric_product(x):
    """x x' (n, n) from the products of row blocks on and below the diagonal, the blocks above being their
    transposes: k (k + 1) / 2 of k^2 products, k = n / :data:`SYMMETRIC_BLOCK_ROWS` rounded (1 to
    :data:`SYMMETRIC_BLOCKS`). float32 x (5000, 2048) on 2 cores: 0.60 s whole, 0.50 s with 2 blocks, 0.40 s with 8."""
    n = x.shape[0]
    k = max(1, min(SYMMETRIC_BLOCKS, round(n / SYMMETRIC_BLOCK_ROWS)))
    edges = [n * i // k for i in range(k + 1)]
    rows = [x[a:b] for a, b in zip(edges[:-1], edges[1:])]
    product = partial(jnp.dot, precision=jax.lax.Precision.HIGHEST)
    lower = {(i, j): product(rows[i], rows[j].T) for i in range(k) for j in range(i + 1)}
    return jnp.block([[lower[(i, j)] if j <= i else lower[(j, i)].T for j in range(k)] for i in range(k)])


def _contribution(chunk: np.ndarray, standardize: bool):
    """Xc Xc' of the chunk (n, k) host array (:func:`_chunk_of`): its integer, complete columns through the exact
    float32 product (:func:`_integer_chunk_contribution`; centred kinships only), the others in float64."""
    exact = np.zeros(chunk.shape[1], bool)
    if not standardize and chunk.shape[1] <= INTEGER_COLUMNS:
        if is_counts(chunk):
            exact = np.all((chunk >= 0) & (chunk <= INTEGER_LIMIT), axis=0)  # negative: missing
        else:
            with np.errstate(invalid="ignore"):
                exact = np.all((chunk == np.rint(chunk)) & (np.abs(chunk) <= INTEGER_LIMIT), axis=0)  # NaN: False
    total = 0.0
    if exact.any():
        total = _integer_chunk_contribution(_padded(chunk[:, exact]))
    if not exact.all():
        total = total + _chunk_contribution(_padded(with_nan(chunk[:, ~exact], np.float64)), standardize)
    return total


def _chunk_of(genotypes, start: int, size: int) -> np.ndarray:
    """Variants start .. start + size - 1 of genotypes (n, M): int8 allele counts, -1 missing, from readers that
    have them (PLINK's ``counts``: decoding to float64 and scanning it cost more than the float32 product at
    N = 5000), else float64 with NaN missing."""
    chunk = read_genotypes(genotypes, (slice(None), slice(start, min(start + size, genotypes.shape[1]))))
    return chunk if is_counts(chunk) else np.asarray(chunk, dtype=float)


def _padded(columns: np.ndarray, multiple: int = 256):
    """The columns with columns of zeros appended up to a multiple of ``multiple`` (a zero column adds nothing to
    either contribution), so the kept variants of every chunk fit one of a few compiled shapes."""
    width = -(-columns.shape[1] // multiple) * multiple
    return jnp.asarray(np.pad(columns, ((0, 0), (0, width - columns.shape[1]))))


def passing_variants(genotypes: np.ndarray, min_maf: float = 0.01, max_missing: float = 0.05) -> np.ndarray:
    """(M,) bool: variants GEMMA uses for its kinship, judged on the analyzed samples' genotypes (n, M): floats
    with NaN missing, or integer counts with negative numbers missing.

    Counted-allele frequency in [min_maf, 1 - min_maf] (GEMMA filters both sides) and missing fraction at most
    max_missing.
    """
    genotypes = np.asarray(genotypes)
    with warnings.catch_warnings():  # an all-missing variant has no mean: NaN, and it fails the filters
        warnings.simplefilter("ignore", RuntimeWarning)
        if is_counts(genotypes):
            absent = genotypes < 0
            observed = genotypes.shape[0] - absent.sum(axis=0)
            frequency = np.where(absent, 0, genotypes).sum(axis=0, dtype=np.int64) / observed / 2
        else:
            absent = np.isnan(genotypes)
            frequency = np.nanmean(genotypes, axis=0) / 2
    missing = absent.mean(axis=0)
    return (frequency >= min_maf) & (frequency <= 1 - min_maf) & (missing <= max_missing)


def relatedness(genotypes, variant_mask=None, standardize: bool = False, chunk_size: int = 2048) -> np.ndarray:
    """(n, n) relatedness from genotypes (n, M) array-like with column slicing; variant_mask (M,) selects variants."""
    m = genotypes.shape[1]
    mask = np.ones(m, dtype=bool) if variant_mask is None else np.asarray(variant_mask, dtype=bool)
    total, used = _accumulate(genotypes, lambda start, chunk: mask[start:start + chunk.shape[1]], standardize,
                              chunk_size)
    return total / used


def filtered_relatedness(genotypes, analyzed, min_maf: float = 0.01, max_missing: float = 0.05,
                         standardize: bool = False, chunk_size: int = 2048,
                         variant_mask=None) -> tuple[np.ndarray, int]:
    """GEMMA's ``-gk`` in one pass: variants pass :func:`passing_variants` on the analyzed samples' genotypes
    (analyzed: (n,) bool) and variant_mask ((M,) bool, e.g. from ``--ksnps``; all when None), and the relatedness
    of all n samples is built from those. Returns (K (n, n), variants used)."""
    analyzed = np.asarray(analyzed, dtype=bool)
    mask = np.ones(genotypes.shape[1], bool) if variant_mask is None else np.asarray(variant_mask, bool)
    total, used = _accumulate(
        genotypes, lambda start, chunk: passing_variants(chunk[analyzed], min_maf, max_missing)
        & mask[start:start + chunk.shape[1]], standardize, chunk_size)
    if used == 0:
        raise InputError("no variant passes the kinship filters (min_maf, max_missing); cannot build a kinship")
    return total / used, used


def _accumulate(genotypes, keep_of_chunk, standardize, chunk_size) -> tuple[np.ndarray, int]:
    """Sum of the chunks' contributions Xc Xc' over the kept variants, read one chunk at a time."""
    n, m = genotypes.shape
    used = 0
    with jax.enable_x64(True):
        total = jnp.zeros((n, n))
        for start in range(0, m, chunk_size):
            chunk = _chunk_of(genotypes, start, chunk_size)
            keep = keep_of_chunk(start, chunk)
            if keep.any():
                total = total + _contribution(chunk[:, keep], standardize)
                used += int(keep.sum())
        return np.asarray(total), used


def relatedness_by_chromosome(genotypes, analyzed, chromosomes, min_maf: float = 0.01, max_missing: float = 0.05,
                              standardize: bool = False, chunk_size: int = 2048, variant_mask=None) -> dict:
    """Per-chromosome pieces of the filtered relatedness, in one pass over the genotypes (for LOCO).

    chromosomes: (M,) chromosome of each variant; variant_mask: (M,) bool or None as in
    :func:`filtered_relatedness`. Returns chromosome -> (S_c (n, n), p_c) with S_c the sum of the
    chromosome's passing variants' contributions Xc Xc' and p_c their count, so that the whole-genome kinship is
    sum_c S_c / sum_c p_c and the leave-one-chromosome-out kinship of c is (sum S - S_c) / (sum p - p_c)
    (:func:`leave_one_out`). Memory: one n x n float64 matrix per chromosome.
    """
    analyzed = np.asarray(analyzed, dtype=bool)
    chromosomes = np.asarray(chromosomes).astype(str)
    n, m = genotypes.shape
    mask = np.ones(m, bool) if variant_mask is None else np.asarray(variant_mask, bool)
    pieces = {}
    with jax.enable_x64(True):
        for start in range(0, m, chunk_size):
            chunk = _chunk_of(genotypes, start, chunk_size)
            keep = passing_variants(chunk[analyzed], min_maf, max_missing) & mask[start:start + chunk.shape[1]]
            chrom = chromosomes[start:start + chunk.shape[1]]
            for c in dict.fromkeys(chrom):  # in order of appearance
                columns = keep & (chrom == c)
                total, used = pieces.get(c, (jnp.zeros((n, n)), 0))
                if columns.any():
                    total = total + _contribution(chunk[:, columns], standardize)
                pieces[c] = (total, used + int(columns.sum()))
    return {c: (np.asarray(total), used) for c, (total, used) in pieces.items()}


def leave_one_out(pieces: dict, chromosome) -> tuple[np.ndarray, int]:
    """(K without ``chromosome`` (n, n), variants used) from :func:`relatedness_by_chromosome`'s pieces."""
    used = sum(p for c, (_, p) in pieces.items() if c != chromosome)
    if used == 0:
        raise InputError(f"leaving out chromosome {chromosome} leaves no variant passing the kinship filters")
    total = sum(S for c, (S, _) in pieces.items() if c != chromosome)
    return total / used, used
