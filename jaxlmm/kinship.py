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
    total, used = _accumulate(genotypes, _kinship_filter(genotypes, analyzed, min_maf, max_missing, variant_mask),
                              standardize, chunk_size)
    _check_used(used)
    return total / used, used


def _kinship_filter(genotypes, analyzed, min_maf: float, max_missing: float, variant_mask):
    """keep(start, chunk) -> (k,) bool: the variants of the chunk starting at variant ``start`` that GEMMA's ``-gk``
    uses (:func:`passing_variants` on the analyzed samples, and variant_mask: (M,) bool or None for all)."""
    analyzed = np.asarray(analyzed, dtype=bool)
    mask = np.ones(genotypes.shape[1], bool) if variant_mask is None else np.asarray(variant_mask, bool)
    return lambda start, chunk: (passing_variants(chunk[analyzed], min_maf, max_missing)
                                 & mask[start:start + chunk.shape[1]])


def _check_used(used: int) -> None:
    if used == 0:
        raise InputError("no variant passes the kinship filters (min_maf, max_missing); cannot build a kinship")


def _accumulate(genotypes, keep_of_chunk, standardize, chunk_size) -> tuple[np.ndarray, int]:
    """Sum of the chunks' contributions Xc Xc' over the kept variants, read one chunk at a time."""
    n, m = genotypes.shape
    used = 0
    total = np.zeros((n, n))  # added to in place: one (n, n) array besides a chunk's product
    with jax.enable_x64(True):
        for start in range(0, m, chunk_size):
            chunk = _chunk_of(genotypes, start, chunk_size)
            keep = keep_of_chunk(start, chunk)
            if keep.any():
                np.add(total, np.asarray(_contribution(chunk[:, keep], standardize)), out=total)
                used += int(keep.sum())
    return total, used


LOCO_HELD_BYTES = 4 * 2**30  # per-chromosome sums held at once by LocoKinships (the default): 4 GiB


def loco_held(n: int) -> int:
    """How many (n, n) per-chromosome sums :class:`LocoKinships` holds at once by default (at least one)."""
    return max(1, LOCO_HELD_BYTES // (8 * n * n))


class LocoKinships:
    """Leave-one-chromosome-out kinships from per-chromosome sums, as GEMMA's ``-gk`` of the other chromosomes.

    With S_c the sum of chromosome c's contributions Xc Xc' over its variants passing :func:`passing_variants` (on
    the analyzed samples, and variant_mask), p_c their count, S and p the sums over all chromosomes, the kinship
    leaving out c is (S - S_c) / (p - p_c) (:meth:`leave_out`); S is built chunk by chunk as
    :func:`filtered_relatedness` builds its sum, so S / p is that kinship bit for bit.

    The first pass over the genotypes builds S, the counts, the filters' verdicts and the sums of the first
    chromosomes asked for (``first`` and those after it, in order of appearance); each S_c is held until it is
    used, at most ``held`` of them (default: as many as fit in :data:`LOCO_HELD_BYTES`, all of them up to n =
    ~5,000 with 22 chromosomes). A chromosome whose sum is not held gets it from another pass, over the variants
    of it and of the next chromosomes not held only. Memory: S and at most ``held`` sums, (n, n) float64 each,
    plus the kinship handed out; at n = 10,000 (800 MB a matrix) holding all 22 chromosomes' sums would take
    18 GB. Asked for in order of appearance, every variant is multiplied twice (into S and into its chromosome's
    sum); a chromosome asked for again after its sum was used costs another pass.

    genotypes: (n, M) array-like with column slicing; analyzed: (n,) bool; chromosomes: (M,) names.
    """

    def __init__(self, genotypes, analyzed, chromosomes, min_maf: float = 0.01, max_missing: float = 0.05,
                 standardize: bool = False, chunk_size: int = 2048, variant_mask=None, held: int | None = None,
                 first=None):
        n, m = genotypes.shape
        self._genotypes, self._standardize, self._chunk_size = genotypes, standardize, chunk_size
        self._chromosomes = np.asarray(chromosomes).astype(str)
        self._order = list(dict.fromkeys(self._chromosomes.tolist()))  # in order of appearance
        self.held = loco_held(n) if held is None else max(1, int(held))
        self.passes = 0
        self._kept = np.zeros(m, bool)  # passing the filters and the mask, found in the first pass
        kinship_filter = _kinship_filter(genotypes, analyzed, min_maf, max_missing, variant_mask)

        def keep_of_chunk(start, chunk):
            keep = kinship_filter(start, chunk)
            self._kept[start:start + chunk.shape[1]] = keep
            return keep

        self.whole, self._sums = np.zeros((n, n)), {}
        self._sums.update(self._pass(self._batch(self._order[0] if first is None else str(first)), keep_of_chunk,
                                     self.whole))
        self.used = {c: int(np.count_nonzero(self._kept & (self._chromosomes == c))) for c in self._order}
        self.whole_used = sum(self.used.values())
        _check_used(self.whole_used)

    def _batch(self, chromosome: str) -> list:
        """The chromosomes whose sums the next pass builds: this one and the next ones in order of appearance that
        are not held, as many as there is room for (all held sums are dropped when there is none)."""
        if len(self._sums) >= self.held:
            self._sums.clear()
        at = self._order.index(chromosome)
        after = [c for c in self._order[at:] + self._order[:at] if c not in self._sums]
        return after[:self.held - len(self._sums)]

    def _pass(self, batch: list, keep_of_chunk, whole=None) -> dict:
        """One pass over the genotypes (all of them with ``whole``, which every kept variant is added to; else only
        the stretch holding the batch's variants): the batch's chromosome sums S_c, added to in place."""
        self.passes += 1
        n, m = self._genotypes.shape
        sums = {c: np.zeros((n, n)) for c in batch}
        first, stop = 0, m
        if whole is None:
            on = np.flatnonzero(self._kept & np.isin(self._chromosomes, batch))
            # chunks where the first pass had them: each sum then adds the same parts in the same order
            first, stop = (int(on[0]) // self._chunk_size * self._chunk_size, int(on[-1]) + 1) if on.size else (0, 0)
        with jax.enable_x64(True):
            for start in range(first, stop, self._chunk_size):
                chunk = _chunk_of(self._genotypes, start, min(self._chunk_size, stop - start))
                keep = keep_of_chunk(start, chunk)
                chromosomes = self._chromosomes[start:start + chunk.shape[1]]
                present = list(dict.fromkeys(chromosomes[keep].tolist()))
                if whole is not None and present:  # the chunk's product, as filtered_relatedness makes it
                    everything = np.asarray(_contribution(chunk[:, keep], self._standardize))
                    np.add(whole, everything, out=whole)
                    if len(present) == 1:  # all its kept variants on one chromosome: that one's part too
                        if present[0] in sums:
                            np.add(sums[present[0]], everything, out=sums[present[0]])
                        continue
                    del everything  # before the parts' products
                for c in present:
                    if c in sums:
                        part = np.asarray(_contribution(chunk[:, keep & (chromosomes == c)], self._standardize))
                        np.add(sums[c], part, out=sums[c])
        return sums

    def leave_out(self, chromosome) -> tuple[np.ndarray, int]:
        """(K without ``chromosome`` (n, n), a new array the caller owns; variants it is built from)."""
        chromosome = str(chromosome)
        used = self.whole_used - self.used.get(chromosome, 0)
        if used == 0:
            raise InputError(f"leaving out chromosome {chromosome} leaves no variant passing the kinship filters")
        if chromosome not in self.used:  # no variant of it in the genotypes: every kept variant counts
            return self.whole / used, used
        if chromosome not in self._sums:
            self._sums.update(self._pass(self._batch(chromosome),
                                         lambda start, chunk: self._kept[start:start + chunk.shape[1]]))
        matrix = np.subtract(self.whole, self._sums.pop(chromosome))
        matrix /= used
        return matrix, used
