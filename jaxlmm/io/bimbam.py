"""GEMMA's BIMBAM mean-genotype text format, streamed in variant chunks.

Genotype file (``-g``; plain or gzipped): one line per variant, ``rsid, allele1, allele0, d_1, ..., d_n`` with
fields separated by commas and/or white space, ``d_i`` the expected count of allele1 for sample i (0..2) in the
order of the phenotype file, ``NA`` when missing (-> NaN). Annotation file (``-a``; optional): ``rsid position
chromosome [cM]`` per line. Phenotype and covariate files have no sample IDs: see :mod:`jaxlmm.io.tables`.

The reader makes one pass at open time (IDs, alleles, field counts) and then decodes variants on demand;
``reader[:, a:b]`` reads sequentially from where the previous read stopped, so a scan over increasing chunks
decompresses the file once more in all, never holding more than one chunk.
"""

from __future__ import annotations

import gzip
import io
from typing import NamedTuple

import numpy as np

from ..validate import InputError
from .plink import Bim

_SEPARATORS = str.maketrans({",": " ", "\t": " "})


def _open_text(path):
    try:
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        return gzip.open(path, "rt") if gzipped else open(path)
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from None


def _lines(path):
    """(line number, text) of the non-blank lines of a plain or gzipped text file."""
    number = 0
    with _open_text(path) as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: unreadable after line {number}: {err}") from None


class Annotation(NamedTuple):
    """Positions of variants by id: rsid -> chromosome, rsid -> base-pair position (NA -> "-9" / -9, as GEMMA
    prints unknown positions)."""

    chrom: dict
    pos: dict


def read_annotation(path) -> Annotation:
    chrom, pos = {}, {}
    for number, line in _lines(path):
        fields = line.translate(_SEPARATORS).split()
        if len(fields) < 3:
            raise InputError(f"{path}: line {number} has {len(fields)} fields, expected rsid, position, chromosome")
        try:
            pos[fields[0]] = -9 if fields[1] == "NA" else int(float(fields[1]))
        except ValueError:
            raise InputError(f"{path}: line {number}: position {fields[1]!r} is not a number or NA") from None
        chrom[fields[0]] = "-9" if fields[2] == "NA" else fields[2]
    return Annotation(chrom, pos)


def _parse_values(path, lines, first_number, n) -> np.ndarray:
    """(n, b) dosages of b genotype lines (field counts already checked at open); a non-number is an error naming
    its line and field. pandas' C tokenizer does the parsing (about 3x numpy's text parser)."""
    import pandas as pd

    try:
        table = pd.read_csv(io.StringIO("".join(lines).translate(_SEPARATORS)), header=None, sep=r"\s+",
                            usecols=range(3, n + 3), dtype=np.float64, na_values=["NA"], keep_default_na=False,
                            engine="c")
        if table.shape == (len(lines), n):
            return table.to_numpy().T
    except (ValueError, pd.errors.ParserError):
        pass
    for offset, line in enumerate(lines):  # locate the offending line
        fields = line.translate(_SEPARATORS).split()
        if len(fields) != n + 3:
            raise InputError(f"{path}: line {first_number + offset} has {len(fields)} fields, expected {n + 3} "
                             f"(rsid, allele1, allele0 and {n} genotypes)")
        for column, field in enumerate(fields[3:], start=4):
            if field != "NA":  # what pandas refused
                try:
                    float(field)
                except ValueError:
                    raise InputError(f"{path}: line {first_number + offset}, field {column}: {field!r} is not a "
                                     "number or NA") from None
    raise InputError(f"{path}: lines {first_number}..{first_number + len(lines) - 1} could not be parsed")


class BimbamReader:
    """Mean genotypes from a BIMBAM file; ``reader[rows, a:b]`` is (len(rows), b - a), NaN when missing.

    shape: (samples, variants); bim: a :class:`jaxlmm.io.plink.Bim` with rsid, alleles and, when an annotation file
    is given, chromosome and position (``"-9"`` / -9 for variants it does not list, as GEMMA prints them).
    """

    def __init__(self, geno_path, anno_path=None):
        self.path = str(geno_path)
        rsid, allele1, allele0, numbers = [], [], [], []
        n = None
        for number, line in _lines(self.path):
            fields = line.translate(_SEPARATORS).split()
            if n is None:
                n = len(fields) - 3
                if n < 1:
                    raise InputError(f"{self.path}: line {number} has {len(fields)} fields; a BIMBAM genotype line "
                                     "is rsid, allele1, allele0, then one value per sample")
            elif len(fields) != n + 3:
                raise InputError(f"{self.path}: line {number} has {len(fields)} fields, expected {n + 3} "
                                 f"(rsid, allele1, allele0 and {n} genotypes, as on the first line)")
            rsid.append(fields[0])
            allele1.append(fields[1])
            allele0.append(fields[2])
            numbers.append(number)
        if n is None:
            raise InputError(f"{self.path}: no genotype lines")
        m = len(rsid)
        chrom, pos = np.full(m, "-9", dtype=object), np.full(m, -9, dtype=np.int64)
        if anno_path is not None:
            annotation = read_annotation(anno_path)
            for j, name in enumerate(rsid):
                if name in annotation.pos:
                    chrom[j], pos[j] = annotation.chrom[name], annotation.pos[name]
        self.bim = Bim(chrom.astype(str), np.array(rsid), np.zeros(m), pos, np.array(allele1), np.array(allele0))
        self.shape = (n, m)
        self._line_numbers = np.array(numbers)
        self._stream, self._next = None, 0

    def _rewind(self):
        if self._stream is not None:
            self._stream.close()
        self._stream, self._next = _lines(self.path), 0

    def _read(self, count):
        lines = []
        for _ in range(count):
            lines.append(next(self._stream)[1])
        self._next += count
        return lines

    def __getitem__(self, index):
        """reader[rows, a:b] or reader[rows, positions] (sorted int array: the span is read, then selected)."""
        rows, cols = index
        if isinstance(cols, slice):
            start, stop, step = cols.indices(self.shape[1])
            if step != 1:
                raise TypeError("BimbamReader reads contiguous variant ranges: reader[:, a:b]")
            selected = None
        else:
            positions = np.asarray(cols, dtype=np.int64)
            if positions.size == 0:
                return np.empty((self.shape[0], 0))[rows]
            start, stop = int(positions.min()), int(positions.max()) + 1
            selected = positions - start
        if stop <= start:
            return np.empty((self.shape[0], 0))[rows]
        if self._stream is None or start < self._next:
            self._rewind()
        self._read(start - self._next)
        lines = self._read(stop - start)
        values = _parse_values(self.path, lines, int(self._line_numbers[start]), self.shape[0])
        return (values if selected is None else values[:, selected])[rows]
