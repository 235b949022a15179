"""Kinship matrices on disk: GEMMA's text (``.cXX.txt`` centred, ``.sXX.txt`` standardized; one row per line, tab
separated, 10 significant digits; plain or gzipped) and numpy's ``.npy`` (exact)."""

from __future__ import annotations

import gzip
import os
import tempfile

import numpy as np

from ..validate import InputError


def read_kinship(path) -> np.ndarray:
    """(n, n) float64 kinship from ``.npy`` or GEMMA text; shape and values are checked later against the samples
    (:func:`jaxlmm.validate.kinship`)."""
    path = str(path)
    try:
        if path.endswith(".npy"):
            matrix = np.load(path, allow_pickle=False)
        else:
            matrix = _read_text_matrix(path)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"cannot read kinship {path}: {err}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"{path}: kinship must be square, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        i, j = np.argwhere(~np.isfinite(matrix))[0]
        raise InputError(f"{path}: kinship entry ({i + 1}, {j + 1}) is {matrix[i, j]}")
    return np.asarray(matrix, dtype=float)  # no copy of a float64 matrix just read


def _read_text_matrix(path) -> np.ndarray:
    """Whitespace-separated rows (pandas' C tokenizer: ~10x a Python split); ragged rows are named. GEMMA's
    tab-separated files take the tokenizer's single-character path first (1940 x 1940: 0.26 s, against 0.45 s
    for any whitespace)."""
    import pandas as pd

    for separator in ("\t", r"\s+"):
        try:
            matrix = pd.read_csv(path, sep=separator, header=None, dtype=np.float64, engine="c").to_numpy()
        except (ValueError, pd.errors.ParserError):
            continue
        if separator == r"\s+" or (matrix.shape[0] == matrix.shape[1] and not np.isnan(matrix).any()):
            return matrix
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as handle:
        rows = [line.split() for line in handle if line.strip()]
    for i, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise InputError(f"{path}: row {i + 1} has {len(row)} values, row 1 has {len(rows[0])}")
    return np.array(rows, dtype=float)


def write_kinship(path, matrix: np.ndarray) -> None:
    """Write atomically: ``.npy`` exact, anything else as GEMMA's tab-separated text with 10 significant digits."""
    path = str(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False, suffix=".tmp") as handle:
            if path.endswith(".npy"):
                np.save(handle, np.asarray(matrix, dtype=float))
            else:
                np.savetxt(handle, matrix, fmt="%.10g", delimiter="\t")
        os.replace(handle.name, path)
    except OSError as err:
        raise InputError(f"cannot write kinship {path}: {err}") from None
