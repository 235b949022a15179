"""Readers and writers on edge cases: .bed sample counts not a multiple of 4 with missing calls, BIMBAM (plain,
gzipped, comma or space separated, NA), phenotype/covariate tables and ID matching, kinship files, the resumable
table."""

import gzip

import numpy as np
import pytest

from jaxlmm import InputError
from jaxlmm.io import tables
from jaxlmm.io.bimbam import BimbamReader
from jaxlmm.io.kinship_files import read_kinship, write_kinship
from jaxlmm.io.plink import BedReader, read_bim
from jaxlmm.io.results import HEADER, ResumableTable, read_table
from test_plink_and_cli_scan import write_plink


@pytest.mark.parametrize("n", [1, 5, 6, 7, 8, 10, 13, 501])  # bytes per variant odd and even
def test_bed_any_sample_count_with_missing_calls(tmp_path, rng, n):
    genotypes = rng.integers(0, 3, size=(n, 9)).astype(float)
    genotypes[rng.random((n, 9)) < 0.2] = np.nan
    write_plink(tmp_path / "g", genotypes, np.ones(n))
    reader = BedReader(tmp_path / "g")
    assert reader.shape == (n, 9)
    np.testing.assert_array_equal(reader[:, :], genotypes)
    np.testing.assert_array_equal(reader[:, 3:7], genotypes[:, 3:7])
    np.testing.assert_array_equal(reader[:, np.array([8, 0, 4])], genotypes[:, [8, 0, 4]])
    rows = np.arange(n) % 2 == 0
    np.testing.assert_array_equal(reader[rows, 2:5], genotypes[rows][:, 2:5])
    counts = reader.counts((rows, slice(2, 5)))  # int8, -1 where missing
    assert counts.dtype == np.int8
    np.testing.assert_array_equal(counts, np.where(np.isnan(genotypes), -1, genotypes)[rows][:, 2:5])


def _write_bimbam(path, dosages, names, separator=", ", compress=False):
    lines = []
    for j, name in enumerate(names):
        values = ["NA" if np.isnan(v) else f"{v:g}" for v in dosages[:, j]]
        lines.append(separator.join([name, "A", "T", *values]) + "\n")
    opener = gzip.open if compress else open
    with opener(path, "wt") as handle:
        handle.writelines(lines)


@pytest.mark.parametrize("separator,compress", [(", ", False), (" ", True), ("\t", False), (",", True)])
def test_bimbam_reads_what_was_written(tmp_path, rng, separator, compress):
    dosages = rng.uniform(0, 2, size=(11, 23)).round(3)
    dosages[rng.random(dosages.shape) < 0.1] = np.nan
    names = [f"rs{j}" for j in range(23)]
    path = tmp_path / ("g.txt.gz" if compress else "g.txt")
    _write_bimbam(path, dosages, names, separator, compress)
    (tmp_path / "a.txt").write_text("".join(f"rs{j}\t{100 * j}\t{1 + j // 10}\n" for j in range(0, 23, 2)))
    reader = BimbamReader(path, tmp_path / "a.txt")
    assert reader.shape == (11, 23)
    np.testing.assert_array_equal(reader[:, :], dosages)
    # chunks in order, out of order and after a rewind all agree
    for start, stop in [(0, 5), (5, 12), (2, 9), (20, 23), (0, 23)]:
        np.testing.assert_array_equal(reader[:, start:stop], dosages[:, start:stop])
    assert list(reader.bim.rsid) == names
    assert reader.bim.pos[2] == 200 and reader.bim.chrom[12] == "2"
    assert reader.bim.pos[1] == -9 and reader.bim.chrom[1] == "-9"  # not in the annotation file, as GEMMA prints


def test_bimbam_bad_lines_are_named(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("rs1, A, T, 0, 1, 2\nrs2, A, T, 0, 1\n")
    with pytest.raises(InputError, match=r"g.txt: line 2 has 5 fields, expected 6"):
        BimbamReader(path)
    path.write_text("rs1, A, T, 0, 1, 2\nrs2, A, T, 0, x1, 2\n")
    reader = BimbamReader(path)
    with pytest.raises(InputError, match=r"line 2, field 5: 'x1' is not a number"):
        reader[:, 0:2]
    path.write_text("\n")
    with pytest.raises(InputError, match="no genotype lines"):
        BimbamReader(path)
    (tmp_path / "t.gz").write_bytes(gzip.compress(b"rs1, A, T, 0, 1, 2\n" * 50)[:40])  # truncated
    with pytest.raises(InputError, match="t.gz"):
        BimbamReader(tmp_path / "t.gz")


def test_bim_positions_are_numbers_and_bad_lines_are_named(tmp_path):
    good = ["1\trs1\t0\t100\tA\tG", "1 rs2 0.5 250 C T", "X\trs3\t1e-2\t9000000000\tG\tA"]
    path = tmp_path / "v.bim"
    path.write_text("\n".join(good) + "\n")
    bim = read_bim(path)
    assert list(bim.rsid) == ["rs1", "rs2", "rs3"] and list(bim.chrom) == ["1", "1", "X"]
    assert bim.cm.dtype == np.float64 and list(bim.cm) == [0.0, 0.5, 0.01]
    assert bim.pos.dtype == np.int64 and list(bim.pos) == [100, 250, 9_000_000_000]
    for line, message in (("1 rs4 0 12x A G", "line 4, column 4: '12x' is not a number"),
                          ("1 rs4 0 1.5 A G", "line 4, column 4: '1.5' is not a number"),
                          ("1 rs4 zero 7 A G", "line 4, column 3: 'zero' is not a number"),
                          ("1 rs4 0 7 A", "line 4 has 5 fields, expected 6")):
        path.write_text("\n".join(good + [line]) + "\n")
        with pytest.raises(InputError, match=message):
            read_bim(path)


def test_tables_columns_by_number_and_name(tmp_path):
    (tmp_path / "p.txt").write_text("FID IID height weight\nf1 a 1.5 NA\nf1 b 2.5 70\nf2 c -9 80\n")
    table = tables.read_id_table(tmp_path / "p.txt")
    assert table.names == ("height", "weight")
    np.testing.assert_array_equal(tables.numeric_column(table, 2), [np.nan, 70, 80])
    np.testing.assert_array_equal(tables.numeric_column(table, "height", tables.PHENOTYPE_MISSING), [1.5, 2.5, np.nan])
    np.testing.assert_array_equal(tables.numeric_column(table, "2"), tables.numeric_column(table, "weight"))
    with pytest.raises(InputError, match="no column named 'bmi'"):
        tables.column_index(table, "bmi")
    with pytest.raises(InputError, match="out of range 1..2"):
        tables.column_index(table, 3)
    (tmp_path / "q.txt").write_text("f1 a 1 x\n")  # no header: columns by number
    headless = tables.read_id_table(tmp_path / "q.txt")
    assert headless.names == ("col1", "col2")
    assert tables.label_column(headless, 2)[0] == "x"
    with pytest.raises(InputError, match=r"q.txt: line 1, column 'col2': 'x' is not a number"):
        tables.numeric_column(headless, 2)


def test_fam_phenotype_columns_count_as_gemma_n(tmp_path):
    (tmp_path / "g.fam").write_text("f a 0 0 1 1.0 10\nf b 0 0 2 -9 20\nf c 0 0 1 NA 30\n")
    table = tables.read_fam_table(tmp_path / "g.fam")
    np.testing.assert_array_equal(tables.numeric_column(table, 1, tables.PHENOTYPE_MISSING), [1.0, np.nan, np.nan])
    np.testing.assert_array_equal(tables.numeric_column(table, 2, tables.PHENOTYPE_MISSING), [10, 20, 30])


def test_sample_matching_across_files(tmp_path):
    fid, iid = np.array(["f", "f", "g"]), np.array(["a", "b", "c"])
    (tmp_path / "p.txt").write_text("FID IID y\ng c 3\nf a 1\nh z 9\n")  # b missing, z extra, other order
    rows = tables.match_samples(fid, iid, tables.read_id_table(tmp_path / "p.txt"))
    np.testing.assert_array_equal(rows, [1, -1, 0])
    (tmp_path / "none.txt").write_text("FID IID y\nx y 1\n")
    with pytest.raises(InputError, match="none of its 1 samples"):
        tables.match_samples(fid, iid, tables.read_id_table(tmp_path / "none.txt"))
    (tmp_path / "dup.txt").write_text("FID IID y\nf a 1\nf a 2\n")
    with pytest.raises(InputError, match="line 3: sample f a appears more than once"):
        tables.read_id_table(tmp_path / "dup.txt")
    (tmp_path / "b.txt").write_text("1\n2\n")
    with pytest.raises(InputError, match="2 rows, but the genotype file has 3 samples"):
        tables.match_samples(fid, iid, tables.read_bimbam_table(tmp_path / "b.txt"))


def test_kinship_files_round_trip(tmp_path, rng):
    W = rng.normal(size=(6, 9))
    K = W @ W.T / 9
    write_kinship(tmp_path / "k.cXX.txt", K)
    write_kinship(tmp_path / "k.npy", K)
    np.testing.assert_allclose(read_kinship(tmp_path / "k.cXX.txt"), K, rtol=1e-9)
    np.testing.assert_array_equal(read_kinship(tmp_path / "k.npy"), K)
    assert (tmp_path / "k.cXX.txt").read_text().count("\n") == 6
    (tmp_path / "bad.txt").write_text("1 0\n0 1 2\n")
    with pytest.raises(InputError, match="row 2 has 3 values"):
        read_kinship(tmp_path / "bad.txt")
    (tmp_path / "rect.txt").write_text("1 0 0\n0 1 0\n")
    with pytest.raises(InputError, match="must be square"):
        read_kinship(tmp_path / "rect.txt")


def test_resumable_table_drops_an_uncommitted_tail(tmp_path):
    path = tmp_path / "r.assoc.tsv"
    table = ResumableTable(path, {"inputs": 1}, resume=False)
    table.append("row1\nrow2\n", 2)
    table.wait()
    table.handle.write(b"half a chunk wri")  # killed before the commit
    table.handle.flush()
    again = ResumableTable(path, {"inputs": 1}, resume=True)
    assert again.resumed_from == 2
    again.append("row3\n", 1)
    assert again.finish() == 3
    assert path.read_text() == HEADER + "row1\nrow2\nrow3\n"
    assert not (tmp_path / "r.assoc.tsv.partial").exists() and not (tmp_path / "r.assoc.tsv.resume.json").exists()
    other = ResumableTable(tmp_path / "s.assoc.tsv", {"inputs": 1}, resume=False)
    other.append(lambda: "x\n", 1)  # text, or a function formatting it in the writer thread
    other.wait()
    with pytest.raises(InputError, match="other inputs or settings"):
        ResumableTable(tmp_path / "s.assoc.tsv", {"inputs": 2}, resume=True)


def test_resumable_table_reports_a_writer_error_in_the_caller(tmp_path):
    table = ResumableTable(tmp_path / "e.assoc.tsv", {"inputs": 1}, resume=False)

    def broken():
        raise OSError("disk full")

    table.append(broken, 1)
    with pytest.raises(InputError, match="disk full"):
        table.wait()
    with pytest.raises(InputError, match="disk full"):
        table.finish()
    assert not (tmp_path / "e.assoc.tsv").exists()


def test_read_table_reads_all_columns_or_the_ones_asked_for(tmp_path):
    path = tmp_path / "t.assoc.tsv"
    row = ["1", "rs1", "100", "0", "A", "G"] + ["1.000000e-01"] * 15 + ["1", "0", "ok"]
    path.write_text(HEADER + "\t".join(row) + "\n" + "\t".join(row[:-1] + ["monomorphic"]) + "\n")
    full = read_table(path)
    assert list(full.columns) == HEADER.split() and full["rs"].tolist() == ["rs1", "rs1"]
    few = read_table(path, ("p_wald", "status"))
    assert list(few.columns) == ["p_wald", "status"]
    assert few["status"].tolist() == ["ok", "monomorphic"] and few["p_wald"].tolist() == [0.1, 0.1]


def test_bim_read_the_same_whatever_the_whitespace(tmp_path):
    """PLINK's tab layout (read by numpy), spaces anywhere (also beside tabs), CRLF line ends and blank lines (read
    by pandas' tokenizer) give the same columns."""
    texts = {"tabs": "1\trs1\t0\t100\tA\tG\n2\trs2\t0.5\t200\tC\tT\n",
             "spaces": "1 rs1 0 100 A G\n2  rs2 0.5 200 C T\n",
             "mixed": "1\trs1 \t0\t100\tA\tG\n2\trs2\t0.5\t200\tC\t T\n",
             "crlf": "1\trs1\t0\t100\tA\tG\r\n2\trs2\t0.5\t200\tC\tT\r\n",
             "blank": "1\trs1\t0\t100\tA\tG\n\n2\trs2\t0.5\t200\tC\tT\n"}
    read = {}
    for name, text in texts.items():
        (tmp_path / f"{name}.bim").write_text(text)
        read[name] = read_bim(tmp_path / f"{name}.bim")
    for name, bim in read.items():
        for field, expected in zip(bim, read["tabs"]):
            np.testing.assert_array_equal(field, expected, err_msg=name)
    np.testing.assert_array_equal(read["tabs"].rsid, ["rs1", "rs2"])
    np.testing.assert_array_equal(read["tabs"].pos, [100, 200])


def test_bim_in_plink_layout_is_read_by_numpy_as_by_the_general_parse(tmp_path, rng):
    """PLINK's own layout (single tabs, newline ends, ASCII) is read by numpy alone: the same columns and types as
    the general parse, numbers of every form (signs, points, exponents, long digit strings) converted exactly;
    anything else falls back to the general parse, and a bad number still names its line."""
    from jaxlmm.io import plink

    m = 300
    names = [f"rs{int(k)}" for k in rng.integers(1, 10 ** rng.integers(1, 12, size=m), size=m)]
    path = tmp_path / "v.bim"
    digits = [f"{v:.{k}f}" for v, k in zip(rng.uniform(-5e3, 5e3, m), rng.integers(0, 9, m))]
    plain = ((["0", "0.5", "-1.25", "3.", ".5", "-0", "0.1", "123456.789012345"] + digits)[:m],
             (["100", "-5", "9000000000", "0", "999999999999999"] * m)[:m])  # converted digit by digit
    other = ((["1e-2", "12345678.123456789", "0.3"] * m)[:m], (["1", "123456789012345678"] * m)[:m])  # by numpy
    for cm, pos in (plain, other):
        lines = [f"{1 + j % 22}\t{names[j]}\t{cm[j]}\t{pos[j]}\t{'ACGT'[j % 4]}\t{'T' * (1 + j % 3)}"
                 for j in range(m)]
        path.write_text("\n".join(lines) + "\n")
        fast = plink._tab_columns(path, 6, plink._BIM_NUMBERS)
        general = plink._regular_columns(path, 6, plink._BIM_NUMBERS)
        assert fast is not None
        for x, y in zip(fast, general):
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(fast[2], [float(v) for v in cm])  # correctly rounded, as Python's float()
        np.testing.assert_array_equal(fast[3], [int(v) for v in pos])
    for text in ("1\trs1\t0\t1\tA\tG\r\n", "1\trs1\t0\t1\tA\tG\n\n", "1\trs1\t0\t1\tA\tG\t\n", "1\trs1\t0\t1\tA\tG",
                 "1\trs\u00e9\t0\t1\tA\tG\n", "1\trs1\t\t1\tA\tG\n", "1\trs1\t0\t1\tA\n"):
        path.write_text(text, encoding="utf-8")
        assert plink._tab_columns(path, 6, plink._BIM_NUMBERS) is None, repr(text)
    path.write_text("1\trs\u00e9\t0\t1\tA\tG\n", encoding="utf-8")
    assert list(read_bim(path).rsid) == ["rs\u00e9"]
    for line, message in (("1\trs4\t0\t12x\tA\tG", "line 2, column 4: '12x' is not a number"),
                          ("1\trs4\tzero\t7\tA\tG", "line 2, column 3: 'zero' is not a number")):
        path.write_text("1\trs1\t0\t100\tA\tG\n" + line + "\n")
        with pytest.raises(InputError, match=message):
            read_bim(path)


def test_small_text_kinship_is_read_by_numpy_as_by_pandas(tmp_path, rng, monkeypatch):
    """Text kinships up to NUMPY_TEXT_BYTES are read by numpy: the same matrix as pandas' parse, bit for bit; a
    ragged or non-numeric file falls back to the parse that names the problem."""
    from jaxlmm.io import kinship_files

    W = rng.normal(size=(40, 60))
    write_kinship(tmp_path / "k.cXX.txt", W @ W.T / 60)
    assert kinship_files._small_text_matrix(str(tmp_path / "k.cXX.txt")) is not None
    by_numpy = read_kinship(tmp_path / "k.cXX.txt")
    monkeypatch.setattr(kinship_files, "NUMPY_TEXT_BYTES", 0)
    np.testing.assert_array_equal(by_numpy, read_kinship(tmp_path / "k.cXX.txt"))
    monkeypatch.undo()
    for text, message in (("1 0\n0 1 2\n", "row 2 has 3 values"), ("1 0\n0 x\n", "kinship entry|cannot read")):
        (tmp_path / "bad.txt").write_text(text)
        assert kinship_files._small_text_matrix(str(tmp_path / "bad.txt")) is None
        with pytest.raises(InputError, match=message):
            read_kinship(tmp_path / "bad.txt")


@pytest.mark.parametrize("separator", ["\t", " "])
def test_large_text_kinship_is_parsed_block_by_block(tmp_path, rng, monkeypatch, separator):
    """Text kinships beyond NUMPY_TEXT_BYTES are parsed by pandas a block of rows at a time into one array: the
    same matrix, bit for bit, whatever the block size (one row, a few, all), tab or space separated, plain or
    gzipped; more rows than columns, a padded tab file and a ragged one are still told apart."""
    from jaxlmm.io import kinship_files

    W = rng.normal(size=(37, 50))
    K = W @ W.T / 50
    text = "\n".join(separator.join(f"{v:.10g}" for v in row) for row in K) + "\n"
    (tmp_path / "k.txt").write_text(text)
    with gzip.open(tmp_path / "k.txt.gz", "wt") as handle:
        handle.write(text)
    expected = np.array([[float(v) for v in line.split()] for line in text.splitlines()])
    monkeypatch.setattr(kinship_files, "NUMPY_TEXT_BYTES", 0)
    for values in (1, 37 * 5, 10**9):  # a row per block (at least one), five rows, everything at once
        monkeypatch.setattr(kinship_files, "TEXT_BLOCK_VALUES", values)
        for name in ("k.txt", "k.txt.gz"):
            np.testing.assert_array_equal(read_kinship(tmp_path / name), expected)
    monkeypatch.setattr(kinship_files, "TEXT_BLOCK_VALUES", 37 * 5)
    (tmp_path / "tall.txt").write_text(text + text.splitlines()[0] + "\n")
    with pytest.raises(InputError, match=r"must be square, got shape \(38, 37\)"):
        read_kinship(tmp_path / "tall.txt")
    (tmp_path / "short.txt").write_text("\n".join(text.splitlines()[:-1]) + "\n")
    with pytest.raises(InputError, match=r"must be square, got shape \(36, 37\)"):
        read_kinship(tmp_path / "short.txt")
    padded = "\n".join(line + "\t" for line in text.replace(separator, "\t").splitlines()) + "\n"
    (tmp_path / "padded.txt").write_text(padded)  # a trailing tab: an empty last field under "\t"
    np.testing.assert_array_equal(read_kinship(tmp_path / "padded.txt"), expected)
    lines = text.splitlines()
    (tmp_path / "ragged.txt").write_text("\n".join(lines[:20] + [lines[20] + " 1"] + lines[21:]) + "\n")
    with pytest.raises(InputError, match="row 21 has 38 values"):
        read_kinship(tmp_path / "ragged.txt")


def test_text_kinship_kept_parsed_while_the_file_is_unchanged(tmp_path, rng, monkeypatch):
    """With a folder set (the command line's cache), a text kinship is parsed once per file version: later reads
    load the kept matrix (bit for bit), a changed file is parsed again, a damaged kept file is replaced, at most
    KEPT_KINSHIPS are kept, and without a folder nothing is written."""
    import os

    from jaxlmm.io import kinship_files

    W = rng.normal(size=(12, 20))
    write_kinship(tmp_path / "k.cXX.txt", W @ W.T / 20)
    parsed = read_kinship(tmp_path / "k.cXX.txt")
    assert not list(tmp_path.rglob("kinship-*.npy"))  # no folder: nothing kept
    folder = tmp_path / "kept"
    parse = kinship_files._read_text_matrix
    calls = []
    monkeypatch.setattr(kinship_files, "_read_text_matrix", lambda path: calls.append(path) or parse(path))
    with kinship_files.kept_in(folder):
        np.testing.assert_array_equal(read_kinship(tmp_path / "k.cXX.txt"), parsed)
        np.testing.assert_array_equal(read_kinship(tmp_path / "k.cXX.txt"), parsed)
        assert len(calls) == 1 and len(list(folder.glob("kinship-*.npy"))) == 1
        write_kinship(tmp_path / "k.cXX.txt", 2.0 * parsed)  # a new version of the file
        os.utime(tmp_path / "k.cXX.txt", ns=(1, 10**18))
        changed = parse(str(tmp_path / "k.cXX.txt"))
        np.testing.assert_array_equal(read_kinship(tmp_path / "k.cXX.txt"), changed)
        assert len(calls) == 2
        kept = max(folder.glob("kinship-*.npy"), key=lambda p: p.stat().st_mtime)
        kept.write_bytes(b"not a matrix")
        np.testing.assert_array_equal(read_kinship(tmp_path / "k.cXX.txt"), changed)
        assert len(calls) == 3
        np.testing.assert_array_equal(read_kinship(tmp_path / "k.cXX.txt"), changed)
        assert len(calls) == 3
        for i in range(kinship_files.KEPT_KINSHIPS + 1):
            write_kinship(tmp_path / f"other{i}.txt", W[:, :12] @ W[:, :12].T + i)
            read_kinship(tmp_path / f"other{i}.txt")
        assert len(list(folder.glob("kinship-*.npy"))) == kinship_files.KEPT_KINSHIPS
        assert not list(folder.glob("*.tmp"))
