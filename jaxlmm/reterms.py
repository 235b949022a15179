"""Random-effect terms of lme4 formulas and the blocks of ``Z`` they make.

Read as lme4 reads them:

    (1 | g)          random intercept per level of g                           one block, k = 1
    (x | g)          = (1 + x | g): correlated intercept and slope              one block, k = 2, full 2 x 2 covariance
    (0 + x | g)      slope only                                                one block, k = 1
    (x || g)         uncorrelated: (1 | g) + (0 + x | g)                        one block per column
    (1 | g1) + (1 | g2)   crossed factors                                      two blocks
    (1 | a/b)        nested: (1 | a) + (1 | b:a) (lme4 names the inner factor "b:a", levels "b_level:a_level")
    (1 | a:b)        the interaction of a and b as one grouping factor

A :class:`ReBlock` is one block: observation i belongs to level ``codes[i]`` and carries the k values ``values[i]`` of
the term's columns (1 for the intercept, x for a slope), so ``Z`` restricted to the block has ``values[i, c]`` at column
``codes[i] k + c``. A kinship term is a block with ``Z = F``, ``K = F F'`` (see :func:`kinship_block`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from .validate import InputError

_RANDOM = re.compile(r"\(([^()|]*)(\|\|?)([^()|]*)\)")
_NAME = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$")


class RandomSpec(NamedTuple):
    """One parsed random-effect term: ``(expr | group)`` or ``(expr || group)``.

    expr:       the left side, a formulaic formula ("1", "Days", "1 + x", "0 + x")
    factors:    the grouping columns whose interaction is the grouping factor, ("g",) or ("b", "a")
    correlated: False for ``||``
    """

    expr: str
    factors: tuple
    correlated: bool

    @property
    def group(self) -> str:
        return ":".join(self.factors)


class ReBlock(NamedTuple):
    """One block of random effects with its own k x k relative covariance factor.

    group:   grouping factor name ("Subject", "cask:batch", "kinship")
    columns: (k,) coefficient names ("(Intercept)", "Days")
    levels:  (l,) level labels (strings; sample ids for a kinship block)
    codes:   (n,) int level of each observation (None for a kinship block)
    values:  (n, k) the term's column values per observation (None for a kinship block)
    spec:    (RandomSpec, column indices into expr's model matrix) to rebuild values for new data; None for kinship
    factor:  (n, m) F with K = F F' for a kinship block, else None
    """

    group: str
    columns: tuple
    levels: tuple
    codes: np.ndarray | None
    values: np.ndarray | None
    spec: tuple | None
    factor: np.ndarray | None = None

    @property
    def size(self) -> tuple:
        """(levels l, coefficients k) as the PLS layout sees it: a kinship block has one 'level' per column of F."""
        if self.factor is not None:
            return (self.factor.shape[1], 1)
        return (len(self.levels), len(self.columns))


def split_random(rhs: str) -> tuple[str, tuple]:
    """Split a right-hand side into the fixed part (formulaic syntax) and its random terms (RandomSpec, ...)."""
    specs = []
    for expr, bars, group in _RANDOM.findall(rhs):
        term = f"({expr}{bars}{group})"
        parts = [p.strip() for p in group.split("/")]
        names = [q.strip() for p in parts for q in p.split(":")]
        if not expr.strip() or not all(_NAME.match(nm) for nm in names):
            raise InputError(f"random-effect term {term!r}: expected (terms | g), (terms || g), g1:g2 or g1/g2")
        for depth in range(len(parts)):  # a/b/c -> a, b:a, c:b:a
            factors = tuple(q.strip() for p in reversed(parts[:depth + 1]) for q in p.split(":"))
            specs.append(RandomSpec(expr.strip(), factors, bars == "|"))
    fixed = _RANDOM.sub("", rhs)
    fixed = re.sub(r"\+\s*(?=\+|$)", "", re.sub(r"^\s*\+", "", fixed.strip())).strip()
    fixed = re.sub(r"\s*\+\s*$", "", fixed)
    return fixed or "1", tuple(specs)


def group_labels(frame, factors: tuple) -> np.ndarray:
    """(n,) string labels of the grouping factor: the columns' values joined by ':' (lme4's interaction labels)."""
    columns = []
    for name in factors:
        col = frame[name]
        if col.dtype.kind == "f" and np.all(np.mod(col.to_numpy(), 1) == 0):
            col = col.astype(np.int64)
        columns.append(col.astype(str).to_numpy())
    labels = columns[0]
    for col in columns[1:]:
        labels = np.char.add(np.char.add(labels.astype(str), ":"), col)
    return labels.astype(str)


def term_columns(spec: RandomSpec, frame) -> tuple[np.ndarray, list]:
    """(n, k) model matrix of the term's left side and its column names ("(Intercept)" for the intercept)."""
    from formulaic import model_matrix

    try:
        matrix = model_matrix(spec.expr, frame, na_action="raise")
    except Exception as err:  # formulaic raises several types for unknown columns and bad syntax
        raise InputError(f"random-effect term ({spec.expr}|{spec.group}): {err}") from None
    names = ["(Intercept)" if c == "Intercept" else str(c) for c in matrix.columns]
    if not names:
        raise InputError(f"random-effect term ({spec.expr}|{spec.group}) has no columns")
    return np.asarray(matrix, dtype=float), names


def blocks_from_frame(specs: tuple, frame) -> list:
    """ReBlocks of the parsed terms evaluated on a table (an uncorrelated term gives one block per column)."""
    blocks = []
    for spec in specs:
        missing = [f for f in spec.factors if f not in frame.columns]
        if missing:
            raise InputError(f"grouping column(s) {missing} of ({spec.expr}|{spec.group}) not found in the data")
        labels = group_labels(frame, spec.factors)
        levels, codes = np.unique(labels, return_inverse=True)
        values, names = term_columns(spec, frame)
        selections = [tuple(range(len(names)))] if spec.correlated else [(c,) for c in range(len(names))]
        for sel in selections:
            blocks.append(ReBlock(spec.group, tuple(names[c] for c in sel), tuple(levels.tolist()),
                                  codes.astype(np.int64), values[:, list(sel)], (spec, sel)))
    return blocks


def kinship_block(kinship, ids=None, name: str = "kinship", rtol: float = 1e-10) -> ReBlock:
    """A polygenic effect ``g ~ N(0, s2 theta^2 K)`` as a PLS block: ``Z = F = U sqrt(s)`` over K's nonzero eigenvalues."""
    kinship = np.asarray(kinship, dtype=float)
    values, vectors = np.linalg.eigh(0.5 * (kinship + kinship.T))
    keep = values > rtol * max(values.max(), 0.0)
    n = kinship.shape[0]
    ids = tuple(str(i) for i in ids) if ids is not None else tuple(str(i) for i in range(1, n + 1))
    return ReBlock(name, ("(Intercept)",), ids, None, None, None, vectors[:, keep] * np.sqrt(values[keep]))


def dense_z(block: ReBlock) -> np.ndarray:
    """The block's columns of Z, (n, l k) level-major (F for a kinship block)."""
    if block.factor is not None:
        return block.factor
    n, k = block.values.shape
    z = np.zeros((n, len(block.levels) * k))
    rows = np.arange(n)
    for c in range(k):
        z[rows, block.codes * k + c] = block.values[:, c]
    return z


def order_blocks(blocks: list) -> list:
    """lme4's order: grouping blocks by number of levels, most first (stable); kinship blocks last.

    Block 0 is then the factor with the most levels, the one the blocked Cholesky handles level by level.
    """
    grouping = sorted((b for b in blocks if b.factor is None), key=lambda b: -len(b.levels))
    return grouping + [b for b in blocks if b.factor is not None]
