"""Random-effect terms and the linear algebra of ``H = I + sum_k r_k Z_k G_k Z_k'``.

A :class:`RandomTerm` is one variance component: ``u ~ N(0, s2 G)`` entering the model as ``Z u``. Three
constructors cover the seed's cases: a grouping factor ``(1|g)`` (``Z`` the indicator matrix, ``G = I``), a
relationship matrix ``K`` (``Z = I``, ``G = K``) and the general ``Z``, ``G``.

A single term is handled in its eigenbasis (:class:`GroupBasis` or :class:`EigenBasis`), which turns ``H`` into a
diagonal matrix and makes each likelihood evaluation O(n) after one rotation of the data. For a grouping factor the
basis is known in closed form: ``Z Z'`` has one eigenvalue per group, equal to the group's size, with eigenvector the
normalized group indicator, and the rotation of a column is its group sums divided by sqrt(group size).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import validate

from .likelihood import SpectralData

# Eigenvalues below this fraction of the largest are treated as exact zeros (rounding noise of a PSD matrix).
EIGENVALUE_RTOL = 1e-10


class RandomTerm(NamedTuple):
    """One variance component ``Z u``, ``u ~ N(0, s2 G)``.

    name:        label used in results (the grouping column, "kinship", ...)
    Z:           (n, q) design of the random effects
    G:           (q, q) relationship among the q effects (identity for a grouping factor)
    levels:      (q,) labels of the random effects (group labels or sample ids)
    group_codes: (n,) int codes of each observation's group when the term is a grouping factor, else None
    """

    name: str
    Z: np.ndarray
    G: np.ndarray
    levels: tuple
    group_codes: np.ndarray | None = None


class GroupBasis(NamedTuple):
    """Closed-form eigenbasis of ``Z Z'`` for a grouping factor.

    codes: (n,) int group of each observation, 0..g-1
    sizes: (g,) group sizes = the nonzero eigenvalues
    """

    codes: jnp.ndarray
    sizes: jnp.ndarray


class EigenBasis(NamedTuple):
    """Eigenbasis of a kernel ``K = U diag(s) U'`` keeping the nonzero eigenvalues.

    vectors: (n, m) orthonormal eigenvectors U
    values:  (m,)   eigenvalues s > 0
    """

    vectors: jnp.ndarray
    values: jnp.ndarray


class RotationRows(NamedTuple):
    """An :class:`EigenBasis` kept for many rotations: ``U'`` as (m, n) row-major rows, so ``U'A`` is a product of
    row-major operands (see :func:`for_rotation`).

    rows:   (m, n) ``U'``
    values: (m,)   eigenvalues s > 0
    """

    rows: jnp.ndarray
    values: jnp.ndarray


def group_term(labels, name: str = "group") -> RandomTerm:
    """A random intercept per level of ``labels`` (any hashable values), lme4's ``(1|name)``.

    Levels are ordered as numpy sorts them (as lme4 orders factor levels), so results line up with R.
    """
    labels = np.asarray(labels)
    levels, codes = np.unique(labels, return_inverse=True)
    n, q = labels.shape[0], levels.shape[0]
    Z = np.zeros((n, q))
    Z[np.arange(n), codes] = 1.0
    return RandomTerm(name, Z, np.eye(q), tuple(levels.tolist()), codes.astype(np.int32))


def kinship_term(kinship, name: str = "kinship", ids=None) -> RandomTerm:
    """A polygenic effect per observation with relationship matrix ``kinship`` (n, n): ``Z = I``, ``G = K``."""
    kinship = np.asarray(kinship, dtype=float)
    n = kinship.shape[0]
    levels = tuple(ids) if ids is not None else tuple(range(1, n + 1))
    return RandomTerm(name, np.eye(n), kinship, levels)


def general_term(Z, G, name: str = "u", levels=None) -> RandomTerm:
    """The seed's general form: ``Z u`` with ``u ~ N(0, s2 G)``; Z: (n, q), G: (q, q)."""
    Z = np.asarray(Z, dtype=float)
    G = np.asarray(G, dtype=float)
    levels = tuple(levels) if levels is not None else tuple(range(1, Z.shape[1] + 1))
    return RandomTerm(name, Z, G, levels)


def kernel(term: RandomTerm) -> np.ndarray:
    """``K = Z G Z'`` (n, n)."""
    if term.group_codes is not None:
        return term.Z @ term.Z.T
    if _is_identity(term.Z):  # a kinship term: K = G, no n^3 products
        return term.G
    return term.Z @ term.G @ term.Z.T


def _is_identity(Z: np.ndarray) -> bool:
    """Whether Z is the (n, n) identity, with no (n, n) temporary (an ``np.eye`` to compare with is 800 MB at
    n = 10,000)."""
    n = Z.shape[0]
    return Z.shape == (n, n) and np.count_nonzero(Z) == n and bool(np.all(np.diagonal(Z) == 1.0))


def mean_kernel_diagonal(term: RandomTerm) -> float:
    """``tr(K) / n``: the phenotypic variance one unit of ``s2`` contributes on average (1 for a grouping factor)."""
    if term.group_codes is not None:
        return 1.0
    n = term.Z.shape[0]
    if _is_identity(term.Z):  # kinship term: tr(K)
        return float(np.trace(term.G) / n)
    return float(np.sum((term.Z @ term.G) * term.Z) / n)


# Platforms whose kernels are decomposed by numpy on the host; elsewhere (GPUs, TPUs) on JAX's default device.
EIGH_ON_HOST_PLATFORMS = ("cpu",)


def spectral_basis(term: RandomTerm):
    """Eigenbasis of the term's kernel, in float64, on JAX's default device: closed form for a grouping factor,
    ``eigh`` otherwise (:func:`decompose`; the term's matrices are left as they are)."""
    if term.group_codes is not None:
        sizes = np.bincount(term.group_codes, minlength=len(term.levels)).astype(float)
        return GroupBasis(jnp.asarray(term.group_codes), jnp.asarray(sizes))
    basis = decompose(kernel(term), term.name)
    with jax.enable_x64(True):  # numpy's put on the device as they are: no per-shape program, as jnp.asarray would
        return EigenBasis(*jax.device_put(tuple(basis)))


def decompose(matrix, name: str = "kernel", overwrite: bool = False) -> EigenBasis:
    """Eigenbasis of a symmetric positive semi-definite (n, n) matrix in float64, keeping the eigenvalues above
    :data:`EIGENVALUE_RTOL` of the largest (a negative one beyond rounding is an error naming ``name``).

    The ``eigh`` runs where the basis will be used. When JAX's default device is a CPU
    (:data:`EIGH_ON_HOST_PLATFORMS`), LAPACK's divide and conquer (``dsyevd``) runs on the host (0.39 s at
    n = 1,410, against 0.7 s for ``jnp.linalg.eigh``) and the basis is returned as numpy arrays; with ``overwrite``
    the matrix (the caller's own, not used again) may be decomposed in place (:func:`_host_eigh`), its memory then
    holding the eigenvectors: no (n, n) copy (800 MB at n = 10,000). Elsewhere (GPUs) ``jnp.linalg.eigh`` runs on
    the device (cuSOLVER) and the basis stays there: numpy's took 7.3 s at n = 4,000 on 2 cores and grows as n^3
    (~90 s at n = 10,000), more than a whole GPU scan of a million variants should take."""
    with jax.enable_x64(True):
        if jax.default_backend() in EIGH_ON_HOST_PLATFORMS:
            values, vectors = _host_eigh(np.asarray(matrix, np.float64), overwrite)
        else:
            values, vectors = jnp.linalg.eigh(jax.device_put(np.asarray(matrix, np.float64)))
        host_values = np.asarray(values)
        validate.positive_semidefinite(host_values, name)
        # ascending eigenvalues: the kept ones are the last
        first = int(np.sum(host_values <= EIGENVALUE_RTOL * max(host_values.max(), 0.0)))
        return EigenBasis(vectors[:, first:], values[first:])


# Kernels of at least this many rows decomposed with overwrite are decomposed in place (scipy's LAPACK driver, with
# overwrite_a): numpy's eigh holds a copy of its input and its own output besides LAPACK's workspace, 4 n^2
# doubles (3.2 GB at n = 10,000) against 2 n^2, but importing scipy.linalg (0.35 s) would cost a small scan more
# than the memory is worth.
IN_PLACE_MIN_SIZE = 4000


def _host_eigh(matrix: np.ndarray, overwrite: bool):
    """(values, vectors) of a symmetric float64 matrix by LAPACK's divide and conquer (``dsyevd``): numpy's, or,
    with ``overwrite`` and at least :data:`IN_PLACE_MIN_SIZE` rows, scipy's in place: a C-ordered matrix is handed
    over as its transpose (the same symmetric matrix, in the Fortran order LAPACK works in), so its memory then
    holds the eigenvectors, Fortran-ordered (their transpose, U', is row-major: what the scan rotates by)."""
    if not (overwrite and matrix.flags.writeable and matrix.shape[0] >= IN_PLACE_MIN_SIZE):
        return np.linalg.eigh(matrix)
    from scipy.linalg import eigh

    return eigh(matrix.T if matrix.flags.c_contiguous else matrix, overwrite_a=True, check_finite=False,
                driver="evd")


def for_rotation(basis, dtype):
    """The basis ready for rotating many matrices in ``dtype`` (e.g. a scan's genotype chunks): an
    :class:`EigenBasis` becomes :class:`RotationRows`, made once, on the host for arrays on the CPU (U' from numpy,
    copied only when it is not row-major in dtype already, then put on U's device); a :class:`GroupBasis` keeps its
    form, its floats cast to dtype.

    XLA:CPU multiplies by a transposed operand, ``U.T @ A`` with U row-major, 20-25% slower than by row-major
    ``U'``: with 512 columns, 23.4 against 19.2 ms at n = 1410, 3.3 against 2.5 ms at n = 500."""
    if not isinstance(basis, EigenBasis):
        return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, basis)
    if _on_cpu(basis.vectors):
        rows = np.ascontiguousarray(np.asarray(basis.vectors).T, dtype=dtype)
        return RotationRows(*jax.device_put((rows, np.asarray(basis.values, dtype)),
                                            getattr(basis.vectors, "sharding", None)))
    return RotationRows(jnp.transpose(basis.vectors).astype(dtype), basis.values.astype(dtype))


def _on_cpu(array) -> bool:
    """Whether an array lies on the host: a numpy array, or a JAX array on CPU devices only."""
    if isinstance(array, np.ndarray):
        return True
    return all(device.platform == "cpu" for device in array.sharding.device_set)


def rotate_host(basis, A: np.ndarray) -> np.ndarray:
    """``U' A`` of a host array A (n, d), as a host array (m, d): by numpy when U lies on the CPU, else as
    :func:`rotate` on U's device. numpy compiles nothing: the eager ``U.T @ A`` compiled a transpose of U in
    every process (0.09 s at n = 1410) before multiplying."""
    if isinstance(basis, EigenBasis) and _on_cpu(basis.vectors):
        return np.asarray(basis.vectors).T @ A
    return np.asarray(rotate(basis, jax.device_put(A)))


def eigenvalues(basis) -> jnp.ndarray:
    """Nonzero eigenvalues of the kernel, (m,)."""
    return basis.sizes if isinstance(basis, GroupBasis) else basis.values


# Products of float32 operands in full float32: JAX's default lets GPUs multiply float32 as TensorFloat32 (10-bit
# mantissas, ~1e-3 relative error) and TPUs as bfloat16 passes. On CPU, and for float64, it changes nothing.
FULL_FLOAT32 = jax.lax.Precision.HIGHEST


def rotate(basis, A: jnp.ndarray) -> jnp.ndarray:
    """``U' A`` for A: (n, d) -> (m, d), in the operands' own precision (:data:`FULL_FLOAT32`: float32 stays float32
    on GPUs and TPUs). For a grouping factor: group sums / sqrt(group size), O(n d)."""
    if isinstance(basis, GroupBasis):
        sums = jax.ops.segment_sum(A, basis.codes, num_segments=basis.sizes.shape[0])
        return sums / jnp.sqrt(basis.sizes)[:, None]
    if isinstance(basis, RotationRows):
        return jnp.matmul(basis.rows, A, precision=FULL_FLOAT32)
    return jnp.matmul(basis.vectors.T, A, precision=FULL_FLOAT32)


def spectral_data(basis, y: jnp.ndarray, X: jnp.ndarray) -> SpectralData:
    """Rotate ``[X y]`` once into the basis (see :class:`jaxlmm.likelihood.SpectralData`)."""
    data = jnp.concatenate([X, y[:, None]], axis=1)
    rotated = rotate(basis, data)
    null_gram = data.T @ data - rotated.T @ rotated
    return SpectralData(eigenvalues(basis), rotated, null_gram, jnp.asarray(y.shape[0], data.dtype))


def spectral_h_inverse(basis, ratio, A: jnp.ndarray) -> jnp.ndarray:
    """``H^-1 A`` for ``H = I + ratio K``: ``A + U diag(1/(1 + ratio s) - 1) U' A``. A: (n, d)."""
    scale = 1.0 / (1.0 + ratio * eigenvalues(basis)) - 1.0
    rotated = rotate(basis, A) * scale[:, None]
    if isinstance(basis, GroupBasis):
        return A + (rotated / jnp.sqrt(basis.sizes)[:, None])[basis.codes]
    return A + basis.vectors @ rotated


def dense_h_inverse(ratios, kernels: jnp.ndarray, A: jnp.ndarray) -> jnp.ndarray:
    """``H^-1 A`` for ``H = I + sum_k ratios[k] kernels[k]`` by Cholesky. kernels: (k, n, n), A: (n, d)."""
    n = kernels.shape[1]
    h = jnp.eye(n, dtype=A.dtype) + jnp.tensordot(ratios, kernels, axes=1)
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), A)
