"""Every bad input a new user might bring gets a clear error from `jaxlmm scan` naming the file, line, column, sample
or variant (exit status 2, no traceback), or a documented per-variant status."""

import gzip

import numpy as np
import pandas as pd
import pytest

from jaxlmm.cli import main
from test_plink_and_cli_scan import write_plink

N, M = 40, 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(7)
    genotypes = rng.integers(0, 3, size=(N, M)).astype(float)
    genotypes[:, 3] = 1.0  # monomorphic
    genotypes[:, 4] = np.nan  # all missing
    genotypes[:, 5] = 0.0
    genotypes[0, 5] = 1.0  # near-monomorphic: maf 1/80 > 0.01 but a single carrier
    genotypes[:12, 6] = np.nan  # 30% missing
    y = genotypes[:, 0] + rng.normal(size=N)
    write_plink(folder / "toy", genotypes, y)
    covariates = pd.DataFrame({"FID": [f"fam{i}" for i in range(N)], "IID": [f"ind{i}" for i in range(N)],
                               "age": rng.normal(50, 10, N).round(1), "batch": rng.integers(0, 2, N)})
    covariates.to_csv(folder / "covar.txt", sep=" ", index=False)
    return folder


def _run(capsys, *args):
    status = main(["scan", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _fails(capsys, pattern, *args):
    status, _, err = _run(capsys, *args)
    assert status == 2, err
    assert pattern in err, err
    assert "Traceback" not in err


def _write(path, text):
    path.write_text(text)
    return path


def test_variant_statuses_cover_every_row(toy, capsys, tmp_path):
    status, out, err = _run(capsys, "--bfile", toy / "toy", "--out", tmp_path / "r", "--mode", "null")
    assert status == 0, err
    table = pd.read_csv(tmp_path / "r.assoc.tsv", sep="\t")
    assert list(table.rs) == [f"snp{j}" for j in range(M)]
    assert list(table.status[3:7]) == ["monomorphic", "all_missing", "ok", "too_many_missing"]
    assert np.isnan(table.p_wald[3]) and np.isfinite(table.p_wald[5])
    assert "rows in == rows out: True" in out


def test_bad_phenotype_values(toy, capsys, tmp_path):
    lines = ["FID IID y"] + [f"fam{i} ind{i} {i % 7}" for i in range(N)]
    bad = lines.copy()
    bad[5] = "fam4 ind4 inf"
    _fails(capsys, "p.txt: line 6, column 'y': 'inf' is not finite",
           "--bfile", toy / "toy", "--pheno", _write(tmp_path / "p.txt", "\n".join(bad)), "--out", tmp_path / "r")
    bad[5] = "fam4 ind4 tall"
    _fails(capsys, "line 6, column 'y': 'tall' is not a number",
           "--bfile", toy / "toy", "--pheno", _write(tmp_path / "p.txt", "\n".join(bad)), "--out", tmp_path / "r")
    constant = ["FID IID y"] + [f"fam{i} ind{i} 3" for i in range(N)]
    _fails(capsys, "constant", "--bfile", toy / "toy", "--pheno", _write(tmp_path / "c.txt", "\n".join(constant)),
           "--out", tmp_path / "r")
    _fails(capsys, "no column named 'height'", "--bfile", toy / "toy", "--pheno", tmp_path / "c.txt",
           "--pheno-col", "height", "--out", tmp_path / "r")
    missing_all = ["FID IID y"] + [f"fam{i} ind{i} NA" for i in range(N)]
    _fails(capsys, "no sample has a phenotype value", "--bfile", toy / "toy",
           "--pheno", _write(tmp_path / "m.txt", "\n".join(missing_all)), "--out", tmp_path / "r")


def test_sample_ids(toy, capsys, tmp_path):
    other = ["FID IID y"] + [f"x{i} y{i} {i}" for i in range(N)]
    _fails(capsys, "none of its 40 samples (FID IID) is in the genotype file",
           "--bfile", toy / "toy", "--pheno", _write(tmp_path / "o.txt", "\n".join(other)), "--out", tmp_path / "r")
    half = ["FID IID y"] + [f"fam{i} ind{i} {i % 5}" for i in range(0, N, 2)]
    status, out, err = _run(capsys, "--bfile", toy / "toy", "--pheno", _write(tmp_path / "h.txt", "\n".join(half)),
                            "--out", tmp_path / "r", "--mode", "null")
    assert status == 0 and "20 samples matched" in out and "samples analyzed: 20 of 40" in out, err
    duplicated = half + ["fam0 ind0 1"]
    _fails(capsys, "sample fam0 ind0 appears more than once", "--bfile", toy / "toy",
           "--pheno", _write(tmp_path / "d.txt", "\n".join(duplicated)), "--out", tmp_path / "r")
    fam = (toy / "toy.fam").read_text().splitlines()
    for ext in ("bed", "bim"):
        (tmp_path / f"dup.{ext}").write_bytes((toy / f"toy.{ext}").read_bytes())
    _write(tmp_path / "dup.fam", "\n".join(fam[:-1] + [fam[0]]) + "\n")
    _fails(capsys, "dup.fam: line 40: sample fam0 ind0 appears more than once", "--bfile", tmp_path / "dup",
           "--out", tmp_path / "r")


def test_bad_covariates(toy, capsys, tmp_path):
    table = pd.read_csv(toy / "covar.txt", sep=" ")
    table["age2"] = table["age"] * 2
    table.to_csv(tmp_path / "collinear.txt", sep=" ", index=False)
    _fails(capsys, "age2", "--bfile", toy / "toy", "--covar", tmp_path / "collinear.txt", "--out", tmp_path / "r")
    table = pd.read_csv(toy / "covar.txt", sep=" ").astype({"age": object})
    table.loc[3, "age"] = "NA"
    table["one"] = 1
    table.to_csv(tmp_path / "gaps.txt", sep=" ", index=False)
    status, out, err = _run(capsys, "--bfile", toy / "toy", "--covar", tmp_path / "gaps.txt", "--out",
                            tmp_path / "r", "--mode", "null")
    assert status == 0, err
    assert "1 samples dropped for a missing value" in out and "'one' is constant: taken as the intercept" in out
    wide = pd.read_csv(toy / "covar.txt", sep=" ")
    for j in range(N):
        wide[f"c{j}"] = np.random.default_rng(j).normal(size=N)
    wide.to_csv(tmp_path / "wide.txt", sep=" ", index=False)
    _fails(capsys, "no residual degrees of freedom", "--bfile", toy / "toy", "--covar", tmp_path / "wide.txt",
           "--out", tmp_path / "r")


def test_bad_kinships(toy, capsys, tmp_path):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(N, 3 * N))
    good = W @ W.T / (3 * N)
    with_nan = good.copy()
    with_nan[3, 5] = np.nan
    cases = {
        "square.txt": (good[:, :-1], "must be square"),
        "nan.txt": (with_nan, "missing or infinite entry at row 4, column 6 (nan)"),
        "small.txt": (good[:-1, :-1], "39 x 39 kinship, but the genotype file has 40 samples"),
        "asym.txt": (good + np.triu(np.full((N, N), 0.5), 1), "is not symmetric"),
        "negative.txt": (good - 2.0 * np.eye(N), "is not positive semi-definite"),
    }
    for name, (matrix, message) in cases.items():
        np.savetxt(tmp_path / name, matrix)
        _fails(capsys, message, "--bfile", toy / "toy", "--kinship", tmp_path / name, "--out", tmp_path / "r")
    _fails(capsys, "kinship", "--bfile", toy / "toy", "--kinship", _write(tmp_path / "text.txt", "a b\nc d\n"),
           "--out", tmp_path / "r")


def test_bad_bed_files(toy, capsys, tmp_path):
    raw = (toy / "toy.bed").read_bytes()
    for name, content, message in [
        ("magic", b"\x00\x00" + raw[2:], "wrong magic number"),
        ("ind", raw[:2] + b"\x00" + raw[3:], "individual-major"),
        ("short", raw[:-3], "bytes, but 40 samples (.fam) x 12 variants (.bim)"),
    ]:
        (tmp_path / f"{name}.bed").write_bytes(content)
        for ext in ("bim", "fam"):
            (tmp_path / f"{name}.{ext}").write_bytes((toy / f"toy.{ext}").read_bytes())
        _fails(capsys, message, "--bfile", tmp_path / name, "--out", tmp_path / "r")
    _fails(capsys, "none.fam", "--bfile", tmp_path / "none", "--out", tmp_path / "r")  # the samples come first


def test_bad_bimbam(capsys, tmp_path):
    rng = np.random.default_rng(3)
    lines = [", ".join([f"rs{j}", "A", "T", *(str(v) for v in rng.integers(0, 3, N))]) for j in range(8)]
    pheno = _write(tmp_path / "p.txt", "\n".join(str(v) for v in rng.normal(size=N)) + "\n")
    truncated = lines[:5] + [lines[5][: len(lines[5]) // 2]] + lines[6:]
    with gzip.open(tmp_path / "t.txt.gz", "wt") as handle:
        handle.write("\n".join(truncated) + "\n")
    _fails(capsys, "t.txt.gz: line 6 has", "--geno", tmp_path / "t.txt.gz", "--pheno", pheno, "--out", tmp_path / "r")
    word = lines.copy()
    word[2] = word[2].replace(", 1", ", one", 1) if ", 1" in word[2] else word[2] + "x"
    _write(tmp_path / "w.txt", "\n".join(word) + "\n")
    _fails(capsys, "w.txt: line 3, field", "--geno", tmp_path / "w.txt", "--pheno", pheno, "--out", tmp_path / "r")
    _write(tmp_path / "g.txt", "\n".join(lines) + "\n")
    short_pheno = _write(tmp_path / "s.txt", "1\n2\n3\n")
    _fails(capsys, "3 rows, but the genotype file has 40 samples", "--geno", tmp_path / "g.txt",
           "--pheno", short_pheno, "--out", tmp_path / "r")


def test_bad_configs_and_outputs(toy, capsys, tmp_path):
    _fails(capsys, "unknown key 'kinsip'", "--config",
           _write(tmp_path / "c.toml", f'bfile = "{toy / "toy"}"\nkinsip = "k.txt"\nout = "r"\n'))
    _fails(capsys, "key 'min_maf' must be a number", "--config",
           _write(tmp_path / "d.toml", f'bfile = "{toy / "toy"}"\nmin_maf = "0.01"\nout = "r"\n'))
    _write(tmp_path / "file", "")
    _fails(capsys, "cannot create the output folder", "--bfile", toy / "toy", "--out", tmp_path / "file" / "sub" / "r")
    _fails(capsys, "no output prefix", "--bfile", toy / "toy")
