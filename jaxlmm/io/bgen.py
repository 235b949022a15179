"""BGEN v1.2 genotype probabilities (layout 2), read as dosages in variant chunks.

A dosage is the expected count of the FIRST allele listed for a variant (``bim.allele1``; the A1 counting of
:mod:`jaxlmm.io.plink`): for unphased diploid calls with probabilities (p11, p12, p22) of the genotypes carrying
two, one and no copies of the first allele it is ``2 p11 + p12``; for phased calls with per-haplotype
probabilities (h1, h2) of carrying the first allele it is ``h1 + h2``. Samples flagged missing read as NaN.

Supported: layout 2, probability bit depths 1..32, genotype blocks uncompressed, zlib (compression flag 1) or
zstd (flag 2; needs the optional ``zstandard`` package, ``pip install jaxlmm[bgen]``, imported only when a zstd
block is met). Every variant must be biallelic and every sample diploid; anything else is refused naming the
variant. Layout 1 (BGEN v1.1) is refused.

File structure (little-endian unsigned integers; spec: https://www.well.ox.ac.uk/~gav/bgen_format/)::

    offset u32 | header: length u32, variants u32, samples u32, b"bgen", free data, flags u32
    [sample block: length u32, samples u32, samples x (length u16, id)]          (flags bit 31)
    at 4 + offset, per variant: id, rsid, chromosome (u16 length + text each), position u32, alleles u16,
        alleles x (length u32, text), genotype block: length C u32, [uncompressed length D u32], data
    genotype data: samples u32, alleles u16, min/max ploidy u8, samples x (ploidy | missing << 7) u8,
        phased u8, bits B u8, 2 probabilities per sample of B bits each, packed from the lowest bit up

Opening the file makes one pass over the variant headers (ids, positions, alleles, where each genotype block
starts); ``reader[rows, a:b]`` then decompresses and decodes only variants a..b-1 from the memory map.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..validate import InputError
from .plink import Bim

BGEN_MAGIC = b"bgen"
_SAMPLE_ID_FLAG = 1 << 31
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class BgenHeader(NamedTuple):
    """The header block: where variant blocks start (byte offset), counts, and the flags decoded."""

    first_variant: int
    n_variants: int
    n_samples: int
    compression: int  # 0 none, 1 zlib, 2 zstd
    layout: int
    has_sample_ids: bool


class Samples(NamedTuple):
    """Sample identifiers (n,); fid (family ids, the .sample file's ID_1) is None when the source has none."""

    fid: np.ndarray | None
    iid: np.ndarray


class VariantIndex(NamedTuple):
    """Per-variant annotation and where its genotype block lies: ``bim`` (chromosome, rsid or else the variant
    id, cM = 0, position, first allele, second allele), ``variant_ids`` (m,), and (m,) byte offsets and lengths
    of the stored (possibly compressed) genotype data with (m,) uncompressed lengths."""

    bim: Bim
    variant_ids: np.ndarray
    data_offset: np.ndarray
    data_size: np.ndarray
    uncompressed_size: np.ndarray


def _u16(buffer, offset: int) -> int:
    return _U16.unpack_from(buffer, offset)[0]


def _u32(buffer, offset: int) -> int:
    return _U32.unpack_from(buffer, offset)[0]


def _text(buffer, offset: int, length: int) -> tuple[str, int]:
    end = offset + length
    if end > len(buffer):
        raise struct.error("text runs past the end of the file")
    return bytes(buffer[offset:end]).decode("utf-8", errors="replace"), end


def read_header(buffer, path) -> BgenHeader:
    """Parse the header block (and check the magic number and that the counts fit the file)."""
    try:
        offset, length, m, n = struct.unpack_from("<4I", buffer, 0)
        magic = bytes(buffer[16:20])
        flags = _u32(buffer, length)  # the header's last four bytes, at 4 + length - 4
    except struct.error:
        raise InputError(f"{path}: truncated BGEN header ({len(buffer)} bytes)") from None
    if magic not in (BGEN_MAGIC, b"\0\0\0\0"):
        raise InputError(f"{path}: not a BGEN file (magic number {magic!r}, expected b'bgen')")
    if length < 20 or length > offset:
        raise InputError(f"{path}: header length {length} does not fit before the first variant (offset {offset})")
    return BgenHeader(offset + 4, m, n, flags & 0b11, (flags >> 2) & 0b1111, bool(flags & _SAMPLE_ID_FLAG))


def read_sample_block(buffer, header: BgenHeader, path) -> np.ndarray:
    """(n,) sample identifiers of the file's sample identifier block (which follows the header block)."""
    offset = 4 + _u32(buffer, 4)
    try:
        count = _u32(buffer, offset + 4)
        if count != header.n_samples:
            raise InputError(f"{path}: sample block lists {count} samples, the header {header.n_samples}")
        offset += 8
        ids = []
        for _ in range(count):
            name, offset = _text(buffer, offset + 2, _u16(buffer, offset))
            ids.append(name)
    except struct.error:
        raise InputError(f"{path}: truncated sample identifier block") from None
    return np.array(ids, dtype=str)


def read_sample_file(path) -> Samples:
    """An Oxford ``.sample`` file: a line of column names, a line of column types, then one sample per line.
    With columns ``ID_1 ID_2 ...`` ID_1 is the family id and ID_2 the sample id; with a single ``ID`` column
    (QCTOOL v2) it is the sample id."""
    try:
        lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from None
    if len(lines) < 2:
        raise InputError(f"{path}: a .sample file starts with two header lines (column names, column types)")
    paired = len(lines[0]) >= 2 and lines[0][1].upper() == "ID_2"
    width = 2 if paired else 1
    for number, row in enumerate(lines[2:], start=3):
        if len(row) < width:
            raise InputError(f"{path}: line {number} has {len(row)} field(s), expected at least {width}")
    rows = lines[2:]
    iid = np.array([row[width - 1] for row in rows], dtype=str)
    return Samples(np.array([row[0] for row in rows], dtype=str) if paired else None, iid)


def index_variants(buffer, header: BgenHeader, path) -> VariantIndex:
    """One pass over the variant blocks: annotation, and the offset/length of each genotype block."""
    m = header.n_variants
    chrom, rsid, variant_ids, pos, allele1, allele0 = [], [], [], [], [], []
    data_offset, data_size, uncompressed = (np.empty(m, dtype=np.int64) for _ in range(3))
    offset = header.first_variant
    for j in range(m):
        try:
            variant_id, offset = _text(buffer, offset + 2, _u16(buffer, offset))
            name, offset = _text(buffer, offset + 2, _u16(buffer, offset))
            chromosome, offset = _text(buffer, offset + 2, _u16(buffer, offset))
            position, n_alleles = struct.unpack_from("<IH", buffer, offset)
            offset += 6
            if n_alleles != 2:
                raise InputError(f"{path}: variant {j + 1} ({name or variant_id}) has {n_alleles} alleles; only "
                                 "biallelic variants are supported")
            alleles = []
            for _ in range(n_alleles):
                allele, offset = _text(buffer, offset + 4, _u32(buffer, offset))
                alleles.append(allele)
            size = _u32(buffer, offset)
            stored = 4 if header.compression else 0  # compressed blocks start with their uncompressed length
            uncompressed[j] = _u32(buffer, offset + 4) if stored else size
        except struct.error:
            raise InputError(f"{path}: truncated at variant {j + 1} of {m}") from None
        if size < stored or offset + 4 + size > len(buffer):
            raise InputError(f"{path}: truncated at variant {j + 1} of {m} (genotype block of {size} bytes runs "
                             "past the end of the file)")
        data_offset[j], data_size[j] = offset + 4 + stored, size - stored
        offset += 4 + size
        variant_ids.append(variant_id)
        rsid.append(name or variant_id)
        chrom.append(chromosome)
        pos.append(position)
        allele1.append(alleles[0])
        allele0.append(alleles[1])
    bim = Bim(np.array(chrom, dtype=str), np.array(rsid, dtype=str), np.zeros(m), np.array(pos, dtype=np.int64),
              np.array(allele1, dtype=str), np.array(allele0, dtype=str))
    return VariantIndex(bim, np.array(variant_ids, dtype=str), data_offset, data_size, uncompressed)


def _decompress(data: bytes, compression: int, size: int) -> bytes:
    if compression == 0:
        return data
    if compression == 1:
        return zlib.decompress(data)
    try:
        import zstandard
    except ImportError:
        raise InputError("zstd-compressed BGEN needs the zstandard package: pip install zstandard "
                         "(or jaxlmm[bgen])") from None
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as err:
        raise ValueError(f"zstd: {err}") from None


def unpack_bits(packed: bytes, count: int, bits: int) -> np.ndarray:
    """(count,) unsigned integers of ``bits`` bits each (1..32), packed consecutively from the lowest bit of the
    first byte up (BGEN's layout). Each value is read as the 64-bit little-endian word starting at its first byte,
    shifted and masked; 8, 16 and 32 bits are plain little-endian arrays."""
    if bits in (8, 16, 32):
        return np.frombuffer(packed, dtype=f"<u{bits // 8}", count=count)
    start = np.arange(count, dtype=np.int64) * bits
    padded = np.frombuffer(packed + bytes(8), dtype=np.uint8)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 8)[start >> 3]  # (count, 8) bytes
    words = np.ascontiguousarray(windows).view("<u8")[:, 0]
    return (words >> (start & 7).astype(np.uint64)) & np.uint64((1 << bits) - 1)


def decode_dosage(data: bytes, n: int) -> np.ndarray:
    """(n,) expected counts of the first allele from an uncompressed layout-2 genotype block, NaN for samples
    flagged missing. Raises ValueError describing what is wrong with the block."""
    if len(data) < 10 + n + 2:
        raise ValueError(f"genotype block of {len(data)} bytes is too short for {n} samples")
    samples, n_alleles, min_ploidy, max_ploidy = struct.unpack_from("<IHBB", data, 0)
    if samples != n:
        raise ValueError(f"genotype block holds {samples} samples, the header {n}")
    if n_alleles != 2:
        raise ValueError(f"{n_alleles} alleles; only biallelic variants are supported")
    ploidy = np.frombuffer(data, dtype=np.uint8, count=n, offset=8)
    if min_ploidy != 2 or max_ploidy != 2 or np.any(ploidy & 0x3F != 2):
        raise ValueError(f"ploidy {min_ploidy}..{max_ploidy}; only diploid samples are supported")
    phased, bits = data[8 + n], data[9 + n]
    if phased > 1 or not 1 <= bits <= 32:
        raise ValueError(f"phased flag {phased} and bit depth {bits} (expected 0 or 1 and 1..32)")
    expected = 10 + n + (2 * n * bits + 7) // 8
    if len(data) != expected:
        raise ValueError(f"genotype block of {len(data)} bytes, expected {expected} for {n} samples at {bits} bits")
    probabilities = unpack_bits(data[10 + n:], 2 * n, bits).reshape(n, 2) / float((1 << bits) - 1)
    dosage = probabilities @ (np.array([1.0, 1.0]) if phased else np.array([2.0, 1.0]))
    dosage[ploidy & 0x80 != 0] = np.nan
    return dosage


class BgenReader:
    """Dosages from a BGEN v1.2 file; ``reader[rows, a:b]`` is float64 (len(rows), b - a), NaN when missing.

    shape: (samples, variants). bim: a :class:`jaxlmm.io.plink.Bim` whose ``allele1`` is the counted (first)
    allele; variant_ids: (m,) the BGEN variant id field (bim.rsid holds the rsid field, or the variant id where
    that is empty). sample_ids: (n,) from ``sample_path`` (an Oxford ``.sample`` file, which takes precedence) or
    the file's sample identifier block, None when neither has them; fids: (n,) family ids (the .sample file's
    ID_1 column) or None. header: the :class:`BgenHeader`; index: the :class:`VariantIndex` built at open.
    """

    def __init__(self, path, sample_path=None):
        self.path = str(path)
        try:
            with open(self.path, "rb") as handle:
                self._buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read {self.path}: {err}") from None
        self.header = read_header(self._buffer, self.path)
        if self.header.layout != 2:
            raise InputError(f"{self.path}: BGEN layout {self.header.layout} is not supported (only layout 2, "
                             "BGEN v1.2; convert with qctool -ofiletype bgen_v1.2)")
        if self.header.compression > 2:
            raise InputError(f"{self.path}: unknown compression flag {self.header.compression}")
        self.index = index_variants(self._buffer, self.header, self.path)
        self.bim, self.variant_ids = self.index.bim, self.index.variant_ids
        n = self.header.n_samples
        samples = (read_sample_file(sample_path) if sample_path is not None
                   else Samples(None, read_sample_block(self._buffer, self.header, self.path))
                   if self.header.has_sample_ids else None)
        if samples is not None and samples.iid.shape[0] != n:
            raise InputError(f"{sample_path}: {samples.iid.shape[0]} samples, but {self.path} has {n}")
        self.sample_ids = None if samples is None else samples.iid
        self.fids = None if samples is None else samples.fid
        self.shape = (n, self.header.n_variants)

    def dosage(self, j: int) -> np.ndarray:
        """(n,) dosages of variant j (0-based)."""
        start = int(self.index.data_offset[j])
        stored = self._buffer[start:start + int(self.index.data_size[j])]
        try:
            data = _decompress(stored, self.header.compression, int(self.index.uncompressed_size[j]))
            if len(data) != self.index.uncompressed_size[j]:
                raise ValueError(f"{len(data)} bytes decompressed, the block declares "
                                 f"{self.index.uncompressed_size[j]}")
            return decode_dosage(data, self.shape[0])
        except (ValueError, zlib.error) as err:
            raise InputError(f"{self.path}: variant {j + 1} ({self.bim.rsid[j]}): bad genotype block: {err}") from None

    def __getitem__(self, index):
        rows, cols = index
        variants = np.atleast_1d(np.arange(self.shape[1])[cols])
        out = np.empty((self.shape[0], variants.shape[0]))
        for k, j in enumerate(variants):
            out[:, k] = self.dosage(int(j))
        return out[rows]
