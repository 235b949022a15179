"""Kinship matrices on disk: GEMMA's text (``.cXX.txt`` centred, ``.sXX.txt`` standardized; one row per line, tab
separated, 10 significant digits; plain or gzipped) and numpy's ``.npy`` (exact).

A text kinship is parsed once per file version when a folder is given (:func:`kept_in`; the command line gives one
beside its compiled programs): its matrix is kept there as ``.npy``, under a key naming the file's real path, size,
modification time and inode, and read back by later runs (mouse HS1940's 1940 x 1940 text: 0.6 s to import pandas
and parse, 0.02 s to load; n = 10,000: 11 s against ~1 s). JAMMA keeps a ``.npy`` beside the text file for the
same reason. At most :data:`KEPT_KINSHIPS` are kept, the least recently used removed first."""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from ..validate import InputError
from .kept_files import keep_recent, write_whole

KEPT_KINSHIPS = 4
_FOLDER: contextvars.ContextVar = contextvars.ContextVar("jaxlmm_kinships", default=None)


@contextlib.contextmanager
def kept_in(folder):
    """Within this context, :func:`read_kinship` keeps the matrices of text kinships in ``folder`` (None: not at
    all) and reads them back while their files are unchanged."""
    token = _FOLDER.set(None if folder is None else str(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)


def read_kinship(path) -> np.ndarray:
    """(n, n) float64 kinship from ``.npy`` or GEMMA text (kept parsed when a folder is set: :func:`kept_in`). Only
    its shape is checked here; its size against the samples and its values (finite, symmetric) are checked by
    :func:`jaxlmm.validate.kinship`, by blocks and without an (n, n) temporary."""
    path = str(path)
    kept = None if path.endswith(".npy") else _kept_path(path)
    try:
        matrix = _load_kept(kept) if kept is not None else None
        loaded = matrix is not None
        if not loaded:
            matrix = np.load(path, allow_pickle=False) if path.endswith(".npy") else _read_text_matrix(path)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"cannot read kinship {path}: {err}") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"{path}: kinship must be square, got shape {matrix.shape}")
    if matrix.dtype.kind not in "biuf":
        raise InputError(f"{path}: kinship must hold numbers, got {matrix.dtype}")
    matrix = np.asarray(matrix, dtype=float)  # no copy of a float64 matrix just read
    if kept is not None and not loaded:  # none kept yet, or one that could not be read back: replaced
        _keep(kept, matrix)
    return matrix


def _kept_path(path: str) -> Path | None:
    """Where the parsed matrix of text kinship ``path`` is kept, or None (no folder set, or the file cannot be
    looked at: its reading then reports why)."""
    folder = _FOLDER.get()
    if folder is None:
        return None
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    key = repr((real, stat.st_size, stat.st_mtime_ns, stat.st_ino, "float64 C", 1))
    return Path(folder) / f"kinship-{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"


def _load_kept(kept: Path) -> np.ndarray | None:
    """The kept matrix, or None when there is none or it cannot be read back (it is then parsed and kept again)."""
    try:
        matrix = np.load(kept, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    os.utime(kept)  # its last use, for eviction
    return matrix


def _keep(kept: Path, matrix: np.ndarray) -> None:
    """Keep a parsed matrix (written whole, then renamed: a reader never sees part of one) and remove all but the
    :data:`KEPT_KINSHIPS` most recently used. Keeping is an optimization: failing to keep is not an error."""
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_whole(kept, lambda handle: np.save(handle, matrix))
        keep_recent(kept.parent, "kinship-*.npy", KEPT_KINSHIPS)
    except OSError:
        pass


NUMPY_TEXT_BYTES = 8 << 20  # text kinships up to this size are read by numpy alone (see _read_text_matrix)


TEXT_BLOCK_VALUES = 8 << 20  # numbers parsed at once from a large text kinship: 64 MB of float64 per block of rows
FIRST_TEXT_ROWS = 64  # rows parsed first, which tell the number of columns


def _read_text_matrix(path) -> np.ndarray:
    """Whitespace-separated rows (pandas' C tokenizer: ~10x a Python split); ragged rows are named. GEMMA's
    tab-separated files take the tokenizer's single-character path first (1940 x 1940: 0.26 s, against 0.45 s
    for any whitespace). Files up to :data:`NUMPY_TEXT_BYTES` are read by numpy (:func:`_small_text_matrix`):
    pandas parses faster, but its import alone (0.3 s) costs more than numpy's slower parse of a small matrix."""
    if not path.endswith(".gz") and os.path.getsize(path) <= NUMPY_TEXT_BYTES:
        matrix = _small_text_matrix(path)
        if matrix is not None:
            return matrix
    import pandas as pd

    for separator in ("\t", r"\s+"):
        try:
            matrix = _parsed_by_blocks(pd, path, separator)
        except (ValueError, pd.errors.ParserError):
            continue
        if matrix is not None:
            return matrix
    return _split_text_matrix(path)


def _parsed_by_blocks(pd, path, separator: str) -> np.ndarray | None:
    """The matrix, parsed by pandas a block of rows at a time (:data:`TEXT_BLOCK_VALUES` numbers) into one array
    made once: a whole-file parse holds every column's values and the matrix at once, twice the matrix (1.6 GB
    at n = 10,000). None when tab-separated parsing leaves empty fields (padding: the whitespace parse then
    decides)."""
    with pd.read_csv(path, sep=separator, header=None, dtype=np.float64, engine="c", iterator=True) as reader:
        block = reader.get_chunk(FIRST_TEXT_ROWS).to_numpy()
        columns = block.shape[1]
        matrix, extra, filled = np.empty((columns, columns)), [], 0  # square, as a kinship must be
        while True:
            if separator == "\t" and np.isnan(block).any():
                return None
            fits = min(block.shape[0], columns - filled)
            matrix[filled:filled + fits] = block[:fits]
            filled += fits
            if fits < block.shape[0]:
                extra.append(block[fits:])  # rows beyond a square: kept only to report the shape
            try:
                block = reader.get_chunk(max(1, TEXT_BLOCK_VALUES // columns)).to_numpy()
            except StopIteration:
                break
    return np.concatenate([matrix[:filled], *extra]) if filled < columns or extra else matrix


def _small_text_matrix(path) -> np.ndarray | None:
    """The matrix of a text file whose non-empty lines hold the same number of whitespace-separated numbers, by
    numpy's text conversion (500 x 500: 0.09 s); None for anything else (the caller's parse names the problem)."""
    import warnings

    with open(path, "rb") as handle:
        text = handle.read()
    data = np.frombuffer(text, np.uint8)
    space = np.isin(data, np.frombuffer(b" \t\r\n\v\f", np.uint8))
    begins = ~space & np.concatenate([[True], space[:-1]])  # each number's first character
    rows = np.bincount(np.searchsorted(np.flatnonzero(data == ord("\n")), np.flatnonzero(begins)))
    rows = rows[rows > 0]  # numbers per non-empty line
    if rows.size == 0 or rows.min() != rows.max():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns, and stops, at text that is not a number
            values = np.fromstring(text.decode("ascii"), dtype=np.float64, sep=" ")
    except (ValueError, UnicodeDecodeError, DeprecationWarning):
        return None
    return values.reshape(rows.size, rows[0]) if values.size == rows.size * rows[0] else None


def _split_text_matrix(path) -> np.ndarray:
    """Rows split in Python: slow, but names a ragged row."""
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

    def write(handle):
        if path.endswith(".npy"):
            np.save(handle, np.asarray(matrix, dtype=float))
        else:
            np.savetxt(handle, matrix, fmt="%.10g", delimiter="\t")

    try:
        write_whole(path, write)
    except OSError as err:
        raise InputError(f"cannot write kinship {path}: {err}") from None
