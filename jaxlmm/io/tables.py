"""Phenotype and covariate tables, and matching their samples to the genotype file's.

Three layouts, one :class:`Table`:

* ``.fam`` (PLINK): FID, IID, father, mother, sex, then phenotypes from column 6 on (GEMMA's ``-n 1`` is column 6);
  ``-9`` and ``NA`` are missing.
* PLINK-style table: FID, IID, then value columns; an optional header line starting ``FID IID`` names them (else
  they are called by number); ``NA``, ``nan`` and ``.`` are missing, and in phenotype columns also ``-9``.
* BIMBAM phenotype or covariate file: value columns only, no IDs, rows in the genotype file's sample order; ``NA``
  missing.

A column is chosen by 1-based number among the value columns (GEMMA's ``-n``) or by header name. Values stay text
until a column is asked for as numbers (:func:`numeric_column`) or as group labels (:func:`label_column`).
"""

from __future__ import annotations

import gzip
from typing import NamedTuple

import numpy as np

from ..validate import InputError

MISSING = frozenset({"NA", "nan", "NaN", "."})
PHENOTYPE_MISSING = MISSING | {"-9", "-9.0"}


class Table(NamedTuple):
    """path: the file; fid, iid: (n,) sample IDs (None for BIMBAM files); names: (k,) column names; text: (n, k)
    values as text; line_numbers: (n,) line of each row in the file (for messages)."""

    path: str
    fid: np.ndarray | None
    iid: np.ndarray | None
    names: tuple
    text: np.ndarray
    line_numbers: np.ndarray


def _rows(path):
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rt") if gzipped else open(path)) as handle:
            return [(number, line.replace(",", " ").split()) for number, line in enumerate(handle, start=1)
                    if line.strip()]
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise InputError(f"cannot read {path}: {err}") from None


def _rectangular(path, rows, width=None):
    width = len(rows[0][1]) if width is None else width
    for number, fields in rows:
        if len(fields) != width:
            raise InputError(f"{path}: line {number} has {len(fields)} fields, expected {width}")
    return width


def read_fam_table(path) -> Table:
    """Phenotype columns of a ``.fam`` (column 6 on), named pheno1, pheno2, ... ."""
    rows = _rows(path)
    if not rows:
        raise InputError(f"{path}: no samples")
    width = _rectangular(path, rows)
    if width < 6:
        raise InputError(f"{path}: {width} fields per line; a .fam has at least 6")
    return _table(path, rows, skip=3, names=tuple(f"pheno{j + 1}" for j in range(width - 5)))


def read_id_table(path) -> Table:
    """A PLINK-style FID/IID table with an optional ``FID IID ...`` header."""
    rows = _rows(path)
    if not rows:
        raise InputError(f"{path}: empty table")
    header = [f.upper() for f in rows[0][1][:2]] == ["FID", "IID"]
    names = tuple(rows[0][1][2:]) if header else None
    rows = rows[1:] if header else rows
    if not rows:
        raise InputError(f"{path}: a header but no samples")
    width = _rectangular(path, rows, None if names is None else len(names) + 2)
    if width < 3:
        raise InputError(f"{path}: {width} fields per line; expected FID, IID and at least one value column")
    return _table(path, rows, skip=0, names=names or tuple(f"col{j + 1}" for j in range(width - 2)))


def read_bimbam_table(path) -> Table:
    """A BIMBAM phenotype (``-p``) or covariate (``-c``) file: values only, rows in genotype sample order."""
    rows = _rows(path)
    if not rows:
        raise InputError(f"{path}: empty table")
    width = _rectangular(path, rows)
    return Table(str(path), None, None, tuple(f"col{j + 1}" for j in range(width)),
                 np.array([fields for _, fields in rows], dtype=object), np.array([n for n, _ in rows]))


def _table(path, rows, skip, names) -> Table:
    fields = np.array([f for _, f in rows], dtype=object)
    fid, iid = fields[:, 0].astype(str), fields[:, 1].astype(str)
    pairs = list(zip(fid, iid))
    if len(set(pairs)) != len(pairs):
        seen, lines = set(), np.array([n for n, _ in rows])
        for (pair, line) in zip(pairs, lines):
            if pair in seen:
                raise InputError(f"{path}: line {line}: sample {pair[0]} {pair[1]} appears more than once")
            seen.add(pair)
    return Table(str(path), fid, iid, tuple(names), fields[:, 2 + skip:], np.array([n for n, _ in rows]))


def column_index(table: Table, column) -> int:
    """0-based index of a value column given by 1-based number (int or digit string) or by name."""
    if isinstance(column, str) and column in table.names:
        return table.names.index(column)
    try:
        number = int(column)
    except (TypeError, ValueError):
        raise InputError(f"{table.path}: no column named {column!r} (columns: {', '.join(table.names)})") from None
    if not 1 <= number <= len(table.names):
        raise InputError(f"{table.path}: column number {number} is out of range 1..{len(table.names)}")
    return number - 1


def numeric_column(table: Table, column, missing=MISSING) -> np.ndarray:
    """(n,) float values of a column, NaN where missing; a non-number is an error naming line and column."""
    j = column_index(table, column)
    out = np.empty(table.text.shape[0])
    for i, value in enumerate(table.text[:, j]):
        if value in missing:
            out[i] = np.nan
            continue
        try:
            out[i] = float(value)
        except ValueError:
            raise InputError(f"{table.path}: line {table.line_numbers[i]}, column {table.names[j]!r}: {value!r} is "
                             "not a number") from None
        if not np.isfinite(out[i]):
            raise InputError(f"{table.path}: line {table.line_numbers[i]}, column {table.names[j]!r}: {value!r} is "
                             "not finite")
    return out


def label_column(table: Table, column) -> np.ndarray:
    """(n,) labels of a column as text (a grouping factor); missing labels become None."""
    j = column_index(table, column)
    return np.array([None if v in MISSING else str(v) for v in table.text[:, j]], dtype=object)


def match_samples(fid: np.ndarray, iid: np.ndarray, table: Table) -> np.ndarray:
    """(n,) row of ``table`` for each genotype sample (FID, IID), -1 where the table lacks it. BIMBAM tables have no
    IDs and must list exactly the genotype file's samples, in order."""
    if table.iid is None:
        if table.text.shape[0] != len(iid):
            raise InputError(f"{table.path}: {table.text.shape[0]} rows, but the genotype file has {len(iid)} samples "
                             "(a BIMBAM table lists every sample, in genotype order)")
        return np.arange(len(iid))
    index = {pair: i for i, pair in enumerate(zip(table.fid, table.iid))}
    rows = np.array([index.get(pair, -1) for pair in zip(fid, iid)])
    if (rows < 0).all():
        raise InputError(f"{table.path}: none of its {len(table.iid)} samples (FID IID) is in the genotype file "
                         f"(e.g. {table.fid[0]} {table.iid[0]} vs {fid[0]} {iid[0]})")
    return rows


def read_id_list(path, fields: int) -> list:
    """IDs listed one per line (first ``fields`` fields of each line, e.g. 1 for variant IDs, 2 for FID IID)."""
    ids = []
    for number, row in _rows(path):
        if len(row) < fields:
            raise InputError(f"{path}: line {number} has {len(row)} fields, expected at least {fields}")
        ids.append(tuple(row[:fields]) if fields > 1 else row[0])
    if not ids:
        raise InputError(f"{path}: no IDs listed")
    return ids


def indicator_columns(labels: np.ndarray, name: str) -> tuple[np.ndarray, list, str]:
    """A categorical column (n,) of labels (None = missing) as (n, L-1) indicators of levels 2..L (NaN rows where
    missing), their names ``name=level``, and a note naming the reference level (first in sorted order)."""
    present = sorted({v for v in labels if v is not None})
    if len(present) < 2:
        raise InputError(f"categorical covariate {name!r} has {len(present)} level(s); it needs at least 2")
    missing = np.array([v is None for v in labels])
    columns = np.column_stack([(labels == level).astype(float) for level in present[1:]])
    columns[missing] = np.nan
    note = f"covariate {name!r} categorical: {len(present)} levels, reference {present[0]!r}"
    return columns, [f"{name}={level}" for level in present[1:]], note
