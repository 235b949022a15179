"""BGEN v1.2 reader: round trips through an independent writer (tests/bgen_writer.py) at several bit depths and
compressions, chunked reads, sample ids, malformed files, the committed bgen-reader fixtures, and hard calls
against the PLINK reader and scan."""

import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from bgen_writer import genotype_block, hard_call_probabilities, pack_bits, write_bgen, write_sample_file
from jaxlmm import InputError
from jaxlmm.io.bgen import BgenReader, unpack_bits
from jaxlmm.io.plink import BedReader
from jaxlmm.kinship import relatedness
from jaxlmm.scan import scan
from test_plink_and_cli_scan import write_plink

FIXTURES = Path(__file__).parent / "fixtures" / "bgen"


def random_probabilities(rng, m, n, missing=0.1):
    """(m, n, 3) genotype probabilities with about ``missing`` of the samples missing (NaN rows)."""
    p = rng.dirichlet([0.5, 0.7, 0.9], size=(m, n))
    p[rng.random((m, n)) < missing] = np.nan
    return p


def expected_dosage(probabilities):
    """(n, m) 2 P(two copies of the first allele) + P(one copy), NaN for missing samples."""
    return (probabilities @ np.array([2.0, 1.0, 0.0])).T


@pytest.mark.parametrize("bits", [1, 3, 8, 13, 16, 32])
def test_unpack_bits_matches_bitwise_packing(rng, bits):
    values = rng.integers(0, 1 << bits, size=203, dtype=np.uint64)
    np.testing.assert_array_equal(unpack_bits(pack_bits(values, bits), 203, bits), values)


@pytest.mark.parametrize("compression, bits, n, ids", [
    (1, 8, 37, True), (1, 16, 21, False), (1, 3, 13, True), (2, 8, 29, False), (2, 16, 8, True),
    (0, 8, 11, False), (0, 32, 5, True), (2, 1, 9, False),
])
def test_round_trip_within_quantization(tmp_path, rng, compression, bits, n, ids):
    if compression == 2:
        pytest.importorskip("zstandard")
    p = random_probabilities(rng, 7, n)
    sample_ids = [f"s{i}" for i in range(n)] if ids else None
    stored = write_bgen(tmp_path / "g.bgen", p, bits=bits, compression=compression, sample_ids=sample_ids)
    reader = BgenReader(tmp_path / "g.bgen")
    assert reader.shape == (n, 7)
    dosage = reader[:, :]
    assert dosage.dtype == np.float64 and dosage.shape == (n, 7)
    missing = np.isnan(p).any(axis=2).T
    np.testing.assert_array_equal(np.isnan(dosage), missing)
    # exactly what was stored, and the stored values within the quantization step of the true probabilities
    exact = (stored @ np.array([2.0, 1.0])).T / ((1 << bits) - 1)
    np.testing.assert_allclose(dosage[~missing], exact[~missing], rtol=0, atol=1e-12)
    step = 1.0 / ((1 << bits) - 1)
    assert np.nanmax(np.abs(dosage - expected_dosage(p))) <= 3 * step
    if ids:
        np.testing.assert_array_equal(reader.sample_ids, sample_ids)
    else:
        assert reader.sample_ids is None
    assert reader.fids is None
    np.testing.assert_array_equal(reader.bim.rsid, [f"rs{j + 1}" for j in range(7)])
    np.testing.assert_array_equal(reader.variant_ids, [f"var{j + 1}" for j in range(7)])
    assert list(reader.bim.allele1) == ["A"] * 7 and list(reader.bim.allele0) == ["G"] * 7
    np.testing.assert_array_equal(reader.bim.pos, 1000 * np.arange(1, 8))


def test_chunks_in_any_order_equal_a_full_read(tmp_path, rng):
    n, m = 19, 23
    write_bgen(tmp_path / "g.bgen", random_probabilities(rng, m, n), bits=16)
    reader = BgenReader(tmp_path / "g.bgen")
    full = reader[:, :]
    bounds = [0, 4, 5, 11, 17, 23]
    for k in rng.permutation(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        np.testing.assert_array_equal(reader[:, a:b], full[:, a:b])
    rows = rng.random(n) < 0.5
    np.testing.assert_array_equal(reader[rows, 3:9], full[rows][:, 3:9])
    np.testing.assert_array_equal(reader[:, [7, 2, 7]], full[:, [7, 2, 7]])
    assert reader[:, 5:5].shape == (n, 0)


def test_phased_dosage_is_the_sum_of_haplotypes(tmp_path, rng):
    haplotypes = rng.random((4, 10, 2))  # P(haplotype carries the first allele)
    haplotypes[1, 3] = np.nan
    stored = write_bgen(tmp_path / "p.bgen", haplotypes, bits=16, phased=True)
    dosage = BgenReader(tmp_path / "p.bgen")[:, :]
    np.testing.assert_allclose(dosage, (stored.sum(axis=2) / 65535.0).T * np.where(np.isnan(haplotypes[..., 0].T),
                                                                                  np.nan, 1.0))
    assert np.nanmax(np.abs(dosage - haplotypes.sum(axis=2).T)) <= 2 / 65535


def test_sample_file_gives_ids_and_family_ids(tmp_path, rng):
    n = 6
    write_bgen(tmp_path / "g.bgen", random_probabilities(rng, 2, n), sample_ids=[f"e{i}" for i in range(n)])
    write_sample_file(tmp_path / "g.sample", [f"f{i}" for i in range(n)], [f"i{i}" for i in range(n)])
    reader = BgenReader(tmp_path / "g.bgen", tmp_path / "g.sample")  # the .sample file takes precedence
    np.testing.assert_array_equal(reader.sample_ids, [f"i{i}" for i in range(n)])
    np.testing.assert_array_equal(reader.fids, [f"f{i}" for i in range(n)])
    (tmp_path / "single.sample").write_text("ID missing\n0 0\n" + "".join(f"x{i} 0\n" for i in range(n)))
    single = BgenReader(tmp_path / "g.bgen", tmp_path / "single.sample")
    assert single.fids is None and list(single.sample_ids) == [f"x{i}" for i in range(n)]
    write_sample_file(tmp_path / "short.sample", ["f"] * (n - 1), ["i"] * (n - 1))
    with pytest.raises(InputError, match=r"short\.sample: 5 samples, but .*g\.bgen has 6"):
        BgenReader(tmp_path / "g.bgen", tmp_path / "short.sample")
    (tmp_path / "header.sample").write_text("ID_1 ID_2 missing\n")
    with pytest.raises(InputError, match=r"header\.sample: a \.sample file starts with two header lines"):
        BgenReader(tmp_path / "g.bgen", tmp_path / "header.sample")
    (tmp_path / "ragged.sample").write_text("ID_1 ID_2 missing\n0 0 0\nf1 i1 0\nf2\n")
    with pytest.raises(InputError, match=r"ragged\.sample: line 4 has 1 field\(s\), expected at least 2"):
        BgenReader(tmp_path / "g.bgen", tmp_path / "ragged.sample")


@pytest.mark.parametrize("name, sample_file", [("zlib8", None), ("zstd16", "zstd16.sample"), ("zlib3", None)])
def test_matches_reference_reader_fixture(name, sample_file):
    """Fixtures written by tests/fixtures/bgen/make_fixture.py and read there with bgen-reader 4.0.9."""
    if name.startswith("zstd"):
        pytest.importorskip("zstandard")
    reader = BgenReader(FIXTURES / f"{name}.bgen", None if sample_file is None else FIXTURES / sample_file)
    reference = np.load(FIXTURES / f"{name}.dosage.npy")
    dosage = reader[:, :]
    assert dosage.shape == reference.shape
    np.testing.assert_array_equal(np.isnan(dosage), np.isnan(reference))
    assert np.isnan(reference).any()
    np.testing.assert_allclose(dosage, reference, rtol=0, atol=1e-12)
    reference_samples = [line.split() for line in (FIXTURES / f"{name}.samples.txt").read_text().splitlines()]
    # bgen-reader reports whole .sample lines ("ID_1 ID_2 missing") as sample names
    np.testing.assert_array_equal(reader.sample_ids, [fields[1 if sample_file else 0] for fields in reference_samples])
    if sample_file:
        np.testing.assert_array_equal(reader.fids, [fields[0] for fields in reference_samples])


@pytest.fixture
def hard_calls(tmp_path, rng):
    n, m = 148, 40  # the sample count of test_plink_and_cli_scan's direct scan: in one pytest run the compiled
    # scan (default options) is shared
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, size=m), size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.02] = np.nan
    genotypes[:, 4] = 2.0  # monomorphic
    write_plink(tmp_path / "g", genotypes, np.ones(n))
    write_bgen(tmp_path / "g.bgen", hard_call_probabilities(genotypes), bits=8, compression=1)
    return BgenReader(tmp_path / "g.bgen"), BedReader(tmp_path / "g"), genotypes


def test_hard_calls_equal_the_plink_genotypes(hard_calls):
    bgen, bed, genotypes = hard_calls
    assert bgen.shape == bed.shape
    np.testing.assert_array_equal(bgen[:, :], bed[:, :])
    np.testing.assert_array_equal(bgen[:, :], genotypes)
    assert list(bgen.bim.allele1) == list(bed.bim.allele1)


def test_scan_of_bgen_equals_scan_of_bed(hard_calls, rng):
    bgen, bed, genotypes = hard_calls
    n = genotypes.shape[0]
    y = np.nan_to_num(genotypes[:, 0], nan=1.0) * 0.4 + rng.normal(size=n)
    K = relatedness(bed)
    from_bgen = scan(y, bgen, kinship=K).columns
    from_bed = scan(y, bed, kinship=K).columns
    assert set(from_bgen) == set(from_bed)
    for key, values in from_bed.items():
        if values.dtype.kind == "f":
            np.testing.assert_array_equal(from_bgen[key], values, err_msg=key)
        else:
            assert list(from_bgen[key]) == list(values), key


def _variant_block_start(path) -> int:
    """Byte offset of the first variant block."""
    return struct.unpack_from("<I", Path(path).read_bytes(), 0)[0] + 4


def test_malformed_files_are_named(tmp_path, rng):
    p = random_probabilities(rng, 5, 9)
    path = tmp_path / "g.bgen"
    write_bgen(path, p)
    good = path.read_bytes()
    (tmp_path / "magic.bgen").write_bytes(good[:16] + b"bgem" + good[20:])
    with pytest.raises(InputError, match=r"magic\.bgen: not a BGEN file"):
        BgenReader(tmp_path / "magic.bgen")
    (tmp_path / "short.bgen").write_bytes(good[:-10])
    with pytest.raises(InputError, match=r"short\.bgen: truncated at variant 5 of 5"):
        BgenReader(tmp_path / "short.bgen")
    (tmp_path / "header.bgen").write_bytes(good[:12])
    with pytest.raises(InputError, match=r"header\.bgen: truncated BGEN header"):
        BgenReader(tmp_path / "header.bgen")
    (tmp_path / "empty.bgen").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.bgen"):
        BgenReader(tmp_path / "empty.bgen")
    with pytest.raises(InputError, match=r"cannot read .*absent\.bgen"):
        BgenReader(tmp_path / "absent.bgen")
    write_bgen(tmp_path / "layout1.bgen", p, layout=1)
    with pytest.raises(InputError, match=r"layout1\.bgen: BGEN layout 1 is not supported"):
        BgenReader(tmp_path / "layout1.bgen")


@pytest.mark.parametrize("block, message", [
    (lambda rng: genotype_block(np.full((9, 3), 1 / 3), 8, ploidy=1)[0], "only diploid samples"),
    (lambda rng: genotype_block(np.full((9, 3), 1 / 3), 8, n_alleles=3)[0], "only biallelic"),
    (lambda rng: genotype_block(np.full((9, 3), 1 / 3), 8)[0][:-1], "expected 37 for 9 samples at 8 bits"),
    (lambda rng: genotype_block(np.full((8, 3), 1 / 3), 8)[0], "holds 8 samples, the header 9"),
])
def test_bad_genotype_blocks_name_the_variant(tmp_path, rng, block, message):
    write_bgen(tmp_path / "g.bgen", random_probabilities(rng, 4, 9), blocks={2: block(rng)})
    reader = BgenReader(tmp_path / "g.bgen")
    reader[:, :2]  # the variants before it read fine
    with pytest.raises(InputError, match=rf"g\.bgen: variant 3 \(rs3\): bad genotype block: .*{message}"):
        reader[:, 1:4]


def test_corrupt_compressed_data_and_missing_zstandard(tmp_path, rng, monkeypatch):
    path = tmp_path / "g.bgen"
    write_bgen(path, random_probabilities(rng, 3, 9))
    raw = bytearray(path.read_bytes())
    reader = BgenReader(path)
    start = int(reader.index.data_offset[1])
    raw[start:start + 6] = b"\xff" * 6  # break the zlib stream of variant 2
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"variant 2 \(rs2\): bad genotype block"):
        BgenReader(path)[:, :]
    pytest.importorskip("zstandard")
    write_bgen(tmp_path / "z.bgen", random_probabilities(rng, 2, 9), compression=2)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(InputError, match="needs the zstandard package"):
        BgenReader(tmp_path / "z.bgen")[:, :1]


def test_multiallelic_variant_is_refused_at_open(tmp_path, rng):
    path = tmp_path / "g.bgen"
    write_bgen(path, random_probabilities(rng, 3, 4))
    raw = bytearray(path.read_bytes())
    # variant 1's allele count sits after its three u16-prefixed strings and the u32 position
    offset = _variant_block_start(path)
    for _ in range(3):
        offset += 2 + struct.unpack_from("<H", raw, offset)[0]
    raw[offset + 4:offset + 6] = struct.pack("<H", 3)
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"variant 1 \(rs1\) has 3 alleles"):
        BgenReader(path)
