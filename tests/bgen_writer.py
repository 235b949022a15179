"""A small BGEN v1.2 writer for tests, written from the specification independently of :mod:`jaxlmm.io.bgen`.

Probabilities are quantized as the spec prescribes (scale by 2^B - 1, floor, then give the missing units to the
largest fractional parts so each sample's stored values sum to 2^B - 1) and bit-packed one bit at a time.
"""

import struct
import zlib

import numpy as np


def quantize(probabilities: np.ndarray, bits: int) -> np.ndarray:
    """(n, k) probabilities (rows summing to 1) -> (n, k) integers summing to 2^B - 1 per row."""
    scale = (1 << bits) - 1
    scaled = probabilities * scale
    floor = np.floor(scaled)
    deficit = np.rint(scale - floor.sum(axis=1)).astype(int)
    order = np.argsort(-(scaled - floor), axis=1, kind="stable")
    bump = np.arange(probabilities.shape[1])[None, :] < deficit[:, None]
    result = floor.astype(np.int64)
    np.add.at(result, (np.arange(result.shape[0])[:, None].repeat(result.shape[1], 1), order), bump.astype(int))
    return result


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Integers packed consecutively from the lowest bit of the first byte up."""
    flat = ((values.astype(np.uint64)[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(flat.ravel(), bitorder="little").tobytes()


def genotype_block(probabilities: np.ndarray, bits: int, phased: bool = False, ploidy: int = 2,
                   n_alleles: int = 2) -> tuple[bytes, np.ndarray]:
    """Uncompressed layout-2 probability data and the (n, 2) stored integers.

    probabilities: unphased (n, 3) = P(two, one, no copies of the first allele); phased (n, 2) = P(haplotype 1,
    haplotype 2 carries the first allele). A row of NaN marks a missing sample (stored as zeros).
    """
    n = probabilities.shape[0]
    missing = np.isnan(probabilities).any(axis=1)
    if phased:
        stored = np.stack([quantize(np.stack([p, 1 - p], axis=1), bits)[:, 0]
                           for p in np.nan_to_num(probabilities).T], axis=1)
    else:
        filled = np.where(missing[:, None], np.array([1.0, 0.0, 0.0]), probabilities)
        stored = quantize(filled, bits)[:, :2]
    stored[missing] = 0
    ploidy_bytes = np.full(n, ploidy, dtype=np.uint8) | (missing.astype(np.uint8) << 7)
    data = (struct.pack("<IHBB", n, n_alleles, ploidy, ploidy) + ploidy_bytes.tobytes()
            + struct.pack("<BB", int(phased), bits) + pack_bits(stored.ravel(), bits))
    return data, stored


def _text(value: str, width: str = "<H") -> bytes:
    raw = value.encode()
    return struct.pack(width, len(raw)) + raw


def write_bgen(path, probabilities, bits=8, compression=1, sample_ids=None, rsids=None, alleles=("A", "G"),
               phased=False, layout=2, blocks=None) -> np.ndarray:
    """Write (m, n, 3) (or phased (m, n, 2)) probabilities as a BGEN v1.2 file; returns the (m, n, 2) stored
    integers. compression: 0 none, 1 zlib, 2 zstd. ``blocks`` may replace variants' uncompressed genotype data
    ({variant index: bytes}) to write malformed files."""
    m, n = probabilities.shape[:2]
    samples = b""
    if sample_ids is not None:
        body = struct.pack("<I", n) + b"".join(_text(s) for s in sample_ids)
        samples = struct.pack("<I", len(body) + 4) + body
    flags = compression | (layout << 2) | ((1 << 31) if sample_ids is not None else 0)
    header = struct.pack("<III", 20, m, n) + b"bgen" + struct.pack("<I", flags)
    out = [struct.pack("<I", len(header) + len(samples)), header, samples]
    stored_all = []
    for j in range(m):
        data, stored = genotype_block(probabilities[j], bits, phased)
        data = (blocks or {}).get(j, data)
        stored_all.append(stored)
        rsid = rsids[j] if rsids is not None else f"rs{j + 1}"
        out.append(_text(f"var{j + 1}") + _text(rsid) + _text(str(1 + j // 50)) + struct.pack("<IH", 1000 * (j + 1), 2)
                   + _text(alleles[0], "<I") + _text(alleles[1], "<I"))
        if compression == 0:
            out.append(struct.pack("<I", len(data)) + data)
        else:
            if compression == 1:
                packed = zlib.compress(data)
            else:
                import zstandard

                packed = zstandard.ZstdCompressor().compress(data)
            out.append(struct.pack("<II", len(packed) + 4, len(data)) + packed)
    with open(path, "wb") as handle:
        handle.write(b"".join(out))
    return np.array(stored_all)


def hard_call_probabilities(genotypes: np.ndarray) -> np.ndarray:
    """(n, m) counts of the first allele in {0, 1, 2, NaN} -> (m, n, 3) one-hot probabilities (NaN rows)."""
    g = genotypes.T
    probabilities = np.stack([g == 2, g == 1, g == 0], axis=-1).astype(float)
    probabilities[np.isnan(g)] = np.nan
    return probabilities


def write_sample_file(path, fid, iid):
    lines = ["ID_1 ID_2 missing", "0 0 0"] + [f"{f} {i} 0" for f, i in zip(fid, iid)]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
