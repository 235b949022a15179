"""PLINK reading and `jaxlmm scan` end to end on a small fileset written here."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from jaxlmm import InputError, executables
from jaxlmm.config import scan_config
from jaxlmm.io.plink import BedReader
from jaxlmm.kinship import passing_variants, relatedness
from jaxlmm.pipeline import run_scan
from jaxlmm.scan import scan

CODES = {2.0: 0b00, 1.0: 0b10, 0.0: 0b11}  # genotype (copies of A1) -> PLINK 2-bit code; missing = 0b01


def write_plink(prefix, genotypes, phenotype):
    """Write a SNP-major .bed/.bim/.fam for genotypes (n, m) in {0, 1, 2, nan}."""
    n, m = genotypes.shape
    per_variant = (n + 3) // 4
    body = bytearray()
    for j in range(m):
        packed = np.zeros(per_variant, dtype=np.uint8)
        for i in range(n):
            value = genotypes[i, j]
            code = 0b01 if np.isnan(value) else CODES[float(value)]
            packed[i // 4] |= code << (2 * (i % 4))
        body.extend(packed.tobytes())
    with open(f"{prefix}.bed", "wb") as handle:
        handle.write(bytes([0x6C, 0x1B, 0x01]) + bytes(body))
    with open(f"{prefix}.bim", "w") as handle:
        for j in range(m):
            handle.write(f"{1 + j // 50}\tsnp{j}\t0\t{1000 * (j + 1)}\tA\tG\n")
    with open(f"{prefix}.fam", "w") as handle:
        for i in range(n):
            value = "-9" if np.isnan(phenotype[i]) else repr(float(phenotype[i]))
            handle.write(f"fam{i}\tind{i}\t0\t0\t0\t{value}\n")


@pytest.fixture(scope="module")
def fileset(tmp_path_factory):
    rng = np.random.default_rng(3)
    n, m = 150, 80
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, size=m), size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.01] = np.nan
    genotypes[:, 5] = 0.0  # monomorphic
    phenotype = genotypes[:, 0] * 0.5 + rng.normal(size=n)
    phenotype[[3, 17]] = np.nan
    prefix = str(tmp_path_factory.mktemp("plink") / "toy")
    write_plink(prefix, genotypes, phenotype)
    return prefix, genotypes, phenotype


def test_bed_round_trip(fileset):
    prefix, genotypes, phenotype = fileset
    reader = BedReader(prefix)
    assert reader.shape == genotypes.shape
    np.testing.assert_array_equal(reader[:, :], genotypes)
    np.testing.assert_array_equal(reader[:, 10:13], genotypes[:, 10:13])
    np.testing.assert_array_equal(reader.fam.phenotype, phenotype)


def test_bad_bed_files_are_named(fileset, tmp_path):
    prefix, genotypes, phenotype = fileset
    bad = tmp_path / "bad"
    for ext in (".bim", ".fam"):
        (tmp_path / f"bad{ext}").write_bytes(open(prefix + ext, "rb").read())
    content = open(prefix + ".bed", "rb").read()
    (tmp_path / "bad.bed").write_bytes(b"\x00\x00" + content[2:])
    with pytest.raises(InputError, match="magic"):
        BedReader(bad)
    (tmp_path / "bad.bed").write_bytes(content[:-1])
    with pytest.raises(InputError, match="bytes"):
        BedReader(bad)
    (tmp_path / "bad.bed").write_bytes(content[:2] + b"\x00" + content[3:])
    with pytest.raises(InputError, match="individual-major"):
        BedReader(bad)


def test_cli_scan_writes_every_variant(fileset, tmp_path):
    prefix, genotypes, phenotype = fileset
    out = str(tmp_path / "toy")
    done = subprocess.run([sys.executable, "-m", "jaxlmm.cli", "scan", "--bfile", prefix, "--out", out],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out + ".assoc.tsv", sep="\t")
    assert list(table.columns[:15]) == ["chr", "rs", "ps", "n_miss", "allele1", "allele0", "af", "beta", "se",
                                        "logl_H1", "l_remle", "l_mle", "p_wald", "p_lrt", "p_score"]
    assert len(table) == 80 and list(table.rs) == [f"snp{j}" for j in range(80)]
    assert table.status[5] == "monomorphic"
    log = open(out + ".log.txt").read()
    assert "rows in == rows out: True" in log and f"samples analyzed: {(~np.isnan(phenotype)).sum()} of" in log
    # same numbers as the library call
    keep = ~np.isnan(phenotype)
    sub = genotypes[keep]
    kinship = relatedness(BedReader(prefix), passing_variants(sub))
    direct = scan(phenotype[keep], sub, kinship=kinship[np.ix_(keep, keep)]).columns
    ok = table.status == "ok"
    np.testing.assert_allclose(table.p_wald[ok], direct["p_wald"][ok.to_numpy()], rtol=1e-5)


def test_cli_scan_missing_file_is_a_clean_error(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jaxlmm.cli", "scan", "--bfile", str(tmp_path / "none"),
                           "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2 and "none" in done.stderr and "Traceback" not in done.stderr


def test_programs_loaded_ahead_are_the_ones_the_scan_runs(tmp_path, monkeypatch):
    """A kinship scan loads its kept programs while the .bim and the kinship are read, from shapes guessed before
    (the kinship's rank: n - 1 once centred); the guess must name exactly the programs the scan then runs."""
    rng = np.random.default_rng(5)
    n, m = 40, 120
    genotypes = rng.binomial(2, rng.uniform(0.2, 0.5, size=m), size=(n, m)).astype(float)
    prefix = str(tmp_path / "ahead")
    write_plink(prefix, genotypes, genotypes[:, 0] + rng.normal(size=n))
    paths, found = [], []
    path, preload = executables._path, executables.preload
    monkeypatch.setattr(executables, "_path", lambda *args: paths.append(path(*args)) or paths[-1])
    monkeypatch.setattr(executables, "preload", lambda *args: found.append(preload(*args)) or found[-1])
    config = scan_config(bfile=prefix, out=str(tmp_path / "out"), chunk=64)
    with executables.kept_in(tmp_path / "kept"):
        run_scan(config)  # guessed (nothing kept yet), then compiled and kept
        first_paths, first_table = list(paths), open(tmp_path / "out.assoc.tsv").read()
        paths.clear()
        run_scan(config)
        assert not executables._PRELOADED  # every program loaded ahead was taken
    # null fit and chunk fit: guessed before the .bim is read, guessed again after (a no-op), run
    assert len(first_paths) == 6 and first_paths[:2] == first_paths[2:4] == first_paths[4:]
    assert paths == first_paths and found == [False] * 4 + [True] * 4
    assert open(tmp_path / "out.assoc.tsv").read() == first_table
