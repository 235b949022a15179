"""Eigendecompositions on disk, reused across runs and phenotypes, keyed by the kernel they came from.

Files for a prefix P: ``P.eigenvalues.npy`` (m,), ``P.eigenvectors.npy`` (n, m) and ``P.eigen.json`` holding the
SHA-256 of the decomposed kernel's float64 bytes (after GEMMA's centring, i.e. exactly the matrix decomposed) and
its size. A cache whose key differs from the current kernel is stale and refused with an error, never used.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..structure import EigenBasis, decompose
from ..validate import InputError


def kernel_key(matrix: np.ndarray) -> str:
    """SHA-256 of a kernel's float64 bytes in row order."""
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype=np.float64).data).hexdigest()


def cached_basis(matrix: np.ndarray, prefix: str, name: str = "kinship", overwrite: bool = False) -> EigenBasis:
    """The eigenbasis of a kernel matrix (n, n) (:func:`jaxlmm.structure.decompose`) from ``prefix`` when its key
    matches, else computed (in place with ``overwrite``) and written there."""
    key = kernel_key(matrix)  # before a decomposition in place
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
        return EigenBasis(vectors, values)  # on the host, as decompose's (mapped: read as they are used)
    basis = decompose(matrix, name, overwrite)
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
