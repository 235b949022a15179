"""Eigendecompositions on disk, reused across runs and phenotypes, keyed by the kernel they came from.

Files for a prefix P: ``P.eigenvalues.npy`` (m,), ``P.eigenvectors.npy`` (n, m) and ``P.eigen.json`` holding the
SHA-256 of the decomposed kernel's float64 bytes (after GEMMA's centring, i.e. exactly the matrix decomposed) and
its size. A cache whose key differs from the current kernel is stale and refused with an error, never used.
"""

from __future__ import annotations

import hashlib
import json
import os

import jax.numpy as jnp
import numpy as np

from ..structure import EigenBasis, RandomTerm, kernel, spectral_basis
from ..validate import InputError


def kernel_key(term: RandomTerm) -> str:
    matrix = np.ascontiguousarray(kernel(term), dtype=np.float64)
    return hashlib.sha256(matrix.tobytes()).hexdigest()


def cached_spectral_basis(term: RandomTerm, prefix: str):
    """The term's eigenbasis from ``prefix`` when its key matches, else computed and written there."""
    if term.group_codes is not None:
        return spectral_basis(term)  # closed form, nothing to cache
    key = kernel_key(term)
    meta_path = prefix + ".eigen.json"
    if os.path.exists(meta_path):
        try:
            with open(meta_path) as handle:
                meta = json.load(handle)
            values = np.load(prefix + ".eigenvalues.npy")
            vectors = np.load(prefix + ".eigenvectors.npy", mmap_mode="r")
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the eigendecomposition cache {prefix}: {err}") from None
        if meta.get("kernel_sha256") != key:
            raise InputError(f"{meta_path}: stale eigendecomposition (made from another kinship or other samples); "
                             "remove it or give another --eigen prefix")
        return EigenBasis(jnp.asarray(vectors), jnp.asarray(values))
    basis = spectral_basis(term)
    folder = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(folder, exist_ok=True)
        np.save(prefix + ".eigenvalues.npy", np.asarray(basis.values))
        np.save(prefix + ".eigenvectors.npy", np.asarray(basis.vectors))
        with open(meta_path + ".tmp", "w") as handle:
            json.dump({"kernel_sha256": key, "n": int(basis.vectors.shape[0]), "kept": int(basis.values.shape[0])},
                      handle)
        os.replace(meta_path + ".tmp", meta_path)  # written last: a cache without it is not used
    except OSError as err:
        raise InputError(f"cannot write the eigendecomposition cache {prefix}: {err}") from None
    return basis
