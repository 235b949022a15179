"""Genotype chunks as readers give them: integer allele counts with negative numbers for missing values (PLINK's
int8 ``counts``, -1 missing), or floats with NaN for missing values (dosages, BIMBAM). Chunks travel to the device
in their own compact type and are widened there."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_counts(chunk) -> bool:
    """Whether the chunk holds integer counts (missing: negative) rather than floats (missing: NaN)."""
    return _integer(chunk.dtype)


def _integer(dtype) -> bool:
    return np.dtype(dtype).kind in "iu"


def read_genotypes(reader, index):
    """``reader[index]`` (rows, columns) as the reader's int8 counts when it has them (PLINK: a quarter of the bytes
    of float32, and no float decoding), else as the reader gives it."""
    counts = getattr(reader, "counts", None)
    return np.asarray(counts(index)) if counts is not None else reader[index]


def with_nan(chunk, dtype):
    """The chunk as floats of dtype with NaN where missing. Works on numpy and JAX arrays."""
    xp = jnp if isinstance(chunk, jax.Array) else np
    values = chunk.astype(dtype)
    if not is_counts(chunk):
        return values
    return xp.where(chunk < 0, xp.nan, values)


def transfer_dtype(dtype) -> np.dtype:
    """The type chunks of ``dtype`` travel to the device in: integers as they are (int8 counts: a quarter of the
    bytes of float32), floats in at least float32."""
    return np.dtype(dtype) if _integer(dtype) else np.result_type(dtype, np.float32)
