"""Checks at the front door: bad input raises :class:`InputError` naming the row, column or matrix at fault.

The numeric core never sees unchecked input, so it never has to raise from inside JAX.
"""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """Input that cannot describe a linear mixed model, with the place at fault in the message."""


def _rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask) + 1
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {rows.size - limit} more" if rows.size > limit else "")


def response(y, name: str = "y") -> np.ndarray:
    """y as a finite float vector (n,); 1-based row numbers of non-finite entries in the error."""
    try:
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be numeric: {err}") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{name} must be a vector, got shape {y.shape}")
    bad = ~np.isfinite(y)
    if bad.any():
        raise InputError(f"{name} has {bad.sum()} missing or infinite value(s) at row(s) {_rows(bad)}")
    if y.size and np.ptp(y) == 0:
        raise InputError(f"{name} is constant ({y[0]!r} in all {y.size} rows): there is no variance to model")
    return y


def design(X, n: int, names, what: str = "X") -> np.ndarray:
    """X as a finite float matrix (n, p) with named, linearly independent columns."""
    try:
        X = np.asarray(X, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be numeric: {err}") from None
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise InputError(f"{what} must be a matrix, got shape {X.shape}")
    if X.shape[0] != n:
        raise InputError(f"{what} has {X.shape[0]} rows but y has {n}")
    if len(names) != X.shape[1]:
        raise InputError(f"{len(names)} names given for {X.shape[1]} columns of {what}")
    bad = ~np.isfinite(X)
    if bad.any():
        col = int(np.flatnonzero(bad.any(axis=0))[0])
        raise InputError(
            f"{what} column {names[col]!r} has missing or infinite value(s) at row(s) {_rows(bad[:, col])}"
        )
    dependent = dependent_columns(X)
    if dependent:
        listed = ", ".join(repr(names[j]) for j in dependent)
        raise InputError(
            f"{what} is rank deficient: column(s) {listed} are linear combinations of the columns before them"
        )
    return X


def dependent_columns(X: np.ndarray, rtol: float = 1e-10) -> list[int]:
    """Indices of columns lying (numerically) in the span of the columns before them, by Gram-Schmidt."""
    basis: list[np.ndarray] = []
    dependent = []
    scale = max(np.linalg.norm(X, axis=0).max(initial=0.0), 1.0)
    for j in range(X.shape[1]):
        v = X[:, j].copy()
        for b in basis:
            v -= (b @ v) * b
        for b in basis:  # second pass for orthogonality in floating point
            v -= (b @ v) * b
        norm = np.linalg.norm(v)
        if norm <= rtol * max(np.linalg.norm(X[:, j]), scale * 1e-3):
            dependent.append(j)
        else:
            basis.append(v / norm)
    return dependent


def enough_observations(n: int, p: int, n_variance: int, method: str) -> None:
    """REML needs n - p >= 1 residual contrasts; ML needs n > p."""
    if n <= p:
        raise InputError(f"{n} observations cannot estimate {p} fixed effects and {n_variance} variance parameters")


def groups(labels, n: int, name: str) -> np.ndarray:
    """Grouping labels as a vector of n hashable values with no missing entries."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"grouping factor {name!r} has shape {labels.shape}, expected ({n},)")
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels)
    else:
        bad = np.array([v is None or (isinstance(v, float) and np.isnan(v)) or v == "" for v in labels.tolist()])
    if bad.any():
        raise InputError(f"grouping factor {name!r} is missing at row(s) {_rows(bad)}")
    return labels


KINSHIP_BLOCK = 512  # rows and columns of the blocks the kinship checks run on: (512, 512) temporaries, never (n, n)


def kinship(K, n: int, name: str = "kinship", atol: float = 1e-8, check_psd: bool = True,
            overwrite: bool = False, check_values: bool = True) -> np.ndarray:
    """A relationship matrix: finite, square (n, n), symmetric and positive semi-definite up to rounding. Returns
    ``(K + K') / 2``: a new array, or K itself symmetrized in place when ``overwrite`` (the caller's own copy, e.g.
    a matrix just read from a file, which it does not use again). The checks and the symmetrization run on
    :data:`KINSHIP_BLOCK`-sized blocks, so they need no (n, n) temporary: at n = 10,000 each one is 800 MB.

    check_psd=False skips the eigenvalue test for callers that decompose K anyway and test its eigenvalues there
    (:func:`positive_semidefinite`), saving a second O(n^3) decomposition. check_values=False: K is known finite
    and symmetric (checked before), only its shape is checked, and K is returned as it is (with ``overwrite``, in
    C order) or as a C-ordered copy."""
    try:
        K = np.asarray(K, dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be numeric: {err}") from None
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise InputError(f"{name} must be a square matrix, got shape {K.shape}")
    if K.shape[0] != n:
        raise InputError(f"{name} is {K.shape[0]} x {K.shape[1]} but there are {n} observations")
    if overwrite and not K.flags.writeable:
        overwrite = False
    if not check_values:
        return K if overwrite and K.flags.c_contiguous else np.array(K, order="C")
    out = K if overwrite else np.empty_like(K, order="C")
    scale, largest, at = 1.0, 0.0, None  # max |K| (at least 1); the largest |K_ij - K_ji| and (i, j, K_ij, K_ji)
    for i in range(0, n, KINSHIP_BLOCK):
        for j in range(i, n, KINSHIP_BLOCK):
            upper, lower = K[i:i + KINSHIP_BLOCK, j:j + KINSHIP_BLOCK], K[j:j + KINSHIP_BLOCK, i:i + KINSHIP_BLOCK].T
            if not (np.isfinite(upper).all() and np.isfinite(lower).all()):
                r, c = np.argwhere(~np.isfinite(K))[0]  # the first in row order, as a whole-matrix search finds it
                raise InputError(f"{name} has a missing or infinite entry at row {r + 1}, column {c + 1} "
                                 f"({float(K[r, c])!r})")
            scale = max(scale, float(np.abs(upper).max()), float(np.abs(lower).max()))
            gap = np.abs(upper - lower)
            k = np.unravel_index(np.argmax(gap), gap.shape)
            if gap[k] > largest:
                largest, at = float(gap[k]), (i + k[0], j + k[1], float(upper[k]), float(lower[k]))
            mean = (upper + lower) * 0.5  # a new block: safe to write over K's own
            out[i:i + KINSHIP_BLOCK, j:j + KINSHIP_BLOCK] = mean
            out[j:j + KINSHIP_BLOCK, i:i + KINSHIP_BLOCK] = mean.T
    if largest > atol * scale:
        r, c, upper_value, lower_value = at
        raise InputError(f"{name} is not symmetric: entry ({r + 1}, {c + 1}) is {upper_value!r} but "
                         f"({c + 1}, {r + 1}) is {lower_value!r}")
    if check_psd:
        positive_semidefinite(np.linalg.eigvalsh(out), name)
    return out


def positive_semidefinite(eigenvalues: np.ndarray, name: str) -> None:
    """Raise unless the smallest eigenvalue is >= -1e-6 times the largest magnitude (rounding)."""
    scale = max(np.abs(eigenvalues).max(initial=0.0), 1.0)
    smallest = eigenvalues.min(initial=0.0)
    if smallest < -1e-6 * scale:
        raise InputError(f"{name} is not positive semi-definite: its smallest eigenvalue is {smallest:.3g}")


def relationship(Z, G, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The general term's Z (n, q) and G (q, q), G symmetric positive semi-definite."""
    Z = np.asarray(Z, dtype=float)
    if Z.ndim != 2 or Z.shape[0] != n:
        raise InputError(f"Z of term {name!r} has shape {Z.shape}, expected ({n}, q)")
    if not np.isfinite(Z).all():
        raise InputError(f"Z of term {name!r} has missing or infinite entries")
    G = kinship(G, Z.shape[1], name=f"G of term {name!r}")
    return Z, G
