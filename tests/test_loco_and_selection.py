"""Issue 8 pieces of `jaxlmm scan`: LOCO (equal to a normal scan with each chromosome's leave-one-out kinship;
matching JAMMA's -loco on GEMMA's mouse data), --snps/--ksnps, --keep/--remove, --cat, and the memory pre-flight."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxlmm.cli import main
from jaxlmm.io.plink import BedReader
from jaxlmm.kinship import LocoKinships, filtered_relatedness
from jaxlmm.scan import scan

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "jaxlmm" / "data" / "demo"
MOUSE = ROOT / "tests" / "fixtures" / "gemma" / "mouse_hs1940"


def _scan(capsys, *args):
    status = main(["scan", *map(str, args)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return captured.out


def test_loco_sums_add_up_to_the_whole_kinship():
    reader = BedReader(DEMO)
    analyzed = ~np.isnan(reader.fam.phenotype)
    whole, used = filtered_relatedness(reader, analyzed, chunk_size=700)
    loco = LocoKinships(reader, analyzed, reader.bim.chrom, chunk_size=700)  # chunks span chromosomes
    assert loco.whole_used == used and loco.passes == 1 and loco.held >= len(loco.used)
    np.testing.assert_array_equal(loco.whole / used, whole)
    on_1 = np.asarray(reader.bim.chrom) == "1"
    direct, direct_used = filtered_relatedness(reader, analyzed, variant_mask=~on_1)
    loo, loo_used = loco.leave_out("1")
    assert loo_used == direct_used
    np.testing.assert_allclose(loo, direct, rtol=1e-10, atol=1e-12)


def test_loco_kinships_holding_fewer_sums_are_the_same():
    """LocoKinships holding one chromosome's sum at a time (as at large n, where each is n^2 doubles) builds the
    others in further passes over their variants only: every leave-one-out kinship is bit for bit the one built
    with all sums held, in any order and asked for twice; a chromosome absent from the genotypes leaves all."""
    reader = BedReader(DEMO)
    analyzed = ~np.isnan(reader.fam.phenotype)
    mask = np.random.default_rng(3).random(reader.shape[1]) < 0.8
    options = dict(chunk_size=300, variant_mask=mask)
    held = LocoKinships(reader, analyzed, reader.bim.chrom, **options)
    chromosomes = list(held.used)
    expected = {c: held.leave_out(c) for c in chromosomes}
    assert held.passes == 1 and len(chromosomes) == 3
    one = LocoKinships(reader, analyzed, reader.bim.chrom, held=1, first=chromosomes[1], **options)
    for c in (chromosomes[1], chromosomes[0], chromosomes[2], chromosomes[0]):
        matrix, used = one.leave_out(c)
        assert used == expected[c][1]
        np.testing.assert_array_equal(matrix, expected[c][0])
    assert one.passes == 4
    two = LocoKinships(reader, analyzed, reader.bim.chrom, held=2, **options)  # the first pass holds 1 and 2
    for c in (chromosomes[0], chromosomes[2], chromosomes[1]):  # 3 gets its own pass, 2 is kept meanwhile
        np.testing.assert_array_equal(two.leave_out(c)[0], expected[c][0])
    assert two.passes == 2
    matrix, used = one.leave_out("X")
    assert used == one.whole_used
    np.testing.assert_array_equal(matrix, one.whole / used)


def test_loco_scan_equals_scans_with_leave_one_out_kinships(capsys, tmp_path):
    out = _scan(capsys, "--bfile", DEMO, "--loco", "--out", tmp_path / "loco", "--chunk", 256)
    assert out.count("null model (LOCO, chromosome") == 3
    table = pd.read_csv(tmp_path / "loco.assoc.tsv", sep="\t", dtype={"chr": str})
    reader = BedReader(DEMO)
    y = reader.fam.phenotype
    analyzed = ~np.isnan(y)
    chrom = np.asarray(reader.bim.chrom)
    for c in ("1", "3"):
        kinship, _ = filtered_relatedness(reader, analyzed, variant_mask=chrom != c)
        on = np.flatnonzero(chrom == c)
        direct = scan(y[analyzed], reader[analyzed, :][:, on], kinship=kinship[np.ix_(analyzed, analyzed)],
                      chunk_size=256).columns
        rows = table.iloc[on]
        ok = (rows.status == "ok").to_numpy()
        assert list(rows.status) == list(direct["status"])
        for key in ("p_wald", "p_lrt", "p_score", "beta"):
            np.testing.assert_allclose(rows[key].to_numpy()[ok], direct[key][ok], rtol=2e-6, err_msg=key)


def test_loco_scan_holding_one_sum_at_a_time_writes_the_same_table(capsys, tmp_path, monkeypatch):
    """With room for one chromosome's kinship sum only (as at n = 10,000, where 4 GiB holds 5 of 22), the scan
    builds the others in further passes over the genotypes, says so in its log, and writes the same table."""
    from jaxlmm import kinship

    _scan(capsys, "--bfile", DEMO, "--loco", "--out", tmp_path / "all", "--chunk", 256)
    monkeypatch.setattr(kinship, "LOCO_HELD_BYTES", 1)
    out = _scan(capsys, "--bfile", DEMO, "--loco", "--out", tmp_path / "one", "--chunk", 256)
    assert "1 held at a time" in out and out.count("(another pass over the genotypes)") == 2
    assert (tmp_path / "one.assoc.tsv").read_bytes() == (tmp_path / "all.assoc.tsv").read_bytes()


def test_loco_matches_jamma_on_mouse_subset(capsys, tmp_path):
    with gzip.open(ROOT / "tests" / "fixtures" / "jamma" / "mouse_loco.assoc.txt.gz", "rt") as handle:
        jamma = pd.read_csv(handle, sep="\t")
    # ~560 variants of three chromosomes: three LOCO kinships and scans (all 19 took 73 s of the test suite), each
    # kinship still built from every variant of the other chromosomes
    chosen = jamma.rs[jamma.chr.isin([1, 10, 19])][::3]
    (tmp_path / "snps.txt").write_text("\n".join(chosen) + "\n")
    out = _scan(capsys, "--bfile", MOUSE, "--loco", "--snps", tmp_path / "snps.txt", "--out", tmp_path / "m")
    assert f"{len(chosen)} of 12226 variants tested" in out
    ours = pd.read_csv(tmp_path / "m.assoc.tsv", sep="\t").set_index("rs").loc[chosen]
    ref = jamma.set_index("rs").loc[chosen]
    assert (ours.status == "ok").all()
    for key in ("p_wald", "p_lrt", "p_score"):
        diff = np.abs(np.log10(ours[key].to_numpy()) - np.log10(ref[key].to_numpy()))
        assert diff.max() <= 1e-3, (key, diff.max())
    for key in ("beta", "se", "l_remle", "l_mle"):
        np.testing.assert_allclose(ours[key].to_numpy(), ref[key].to_numpy(), rtol=1e-4, err_msg=key)


def test_ksnps_keep_remove_and_categorical_covariates(capsys, tmp_path):
    reader = BedReader(DEMO)
    fam = pd.read_csv(f"{DEMO}.fam", sep=r"\s+", header=None)
    (tmp_path / "ksnps.txt").write_text("\n".join(reader.bim.rsid[:1500]) + "\n")
    (tmp_path / "keep.txt").write_text("\n".join(f"{f} {i}" for f, i in zip(fam[0][:400], fam[1][:400])) + "\n")
    (tmp_path / "remove.txt").write_text(f"{fam[0][0]} {fam[1][0]}\n")
    covar = pd.read_csv(DEMO.parent / "demo_covariates.txt", sep="\t")
    covar["site"] = np.array(["north", "south", "east"])[np.arange(len(covar)) % 3]
    covar.to_csv(tmp_path / "covar.txt", sep="\t", index=False)
    out = _scan(capsys, "--bfile", DEMO, "--ksnps", tmp_path / "ksnps.txt", "--keep", tmp_path / "keep.txt",
                "--remove", tmp_path / "remove.txt", "--covar", tmp_path / "covar.txt", "--cat", "site",
                "--mode", "null", "--out", tmp_path / "r")
    analyzed = np.zeros(len(fam), bool)
    analyzed[1:400] = True
    analyzed &= ~np.isnan(reader.fam.phenotype)
    assert f"samples analyzed: {analyzed.sum()} of 600" in out
    assert "covariate 'site' categorical: 3 levels, reference 'east'" in out
    assert "kinship: computed (-gk 1) from" in out
    used = int(out.split("kinship: computed (-gk 1) from ")[1].split()[0])
    assert used <= 1500
    # the same model by hand: indicator covariates, kinship from the first 1500 variants
    mask = np.zeros(reader.shape[1], bool)
    mask[:1500] = True
    kinship, direct_used = filtered_relatedness(reader, analyzed, variant_mask=mask)
    assert direct_used == used
    site = covar.site.to_numpy()[analyzed]
    covariates = np.c_[covar.sex.to_numpy()[analyzed], covar.age.to_numpy()[analyzed], site == "north",
                       site == "south"].astype(float)
    direct = scan(reader.fam.phenotype[analyzed], reader[analyzed, :], covariates, mode="null",
                  kinship=kinship[np.ix_(analyzed, analyzed)]).columns
    table = pd.read_csv(tmp_path / "r.assoc.tsv", sep="\t")
    ok = (table.status == "ok").to_numpy()
    np.testing.assert_allclose(table.p_wald.to_numpy()[ok], direct["p_wald"][ok], rtol=1e-5)


def test_memory_preflight_refuses_before_allocating(capsys, tmp_path):
    status = main(["scan", "--bfile", str(MOUSE), "--out", str(tmp_path / "r"), "--max-memory", "0.7",
                   "--chunk", "100000"])
    err = capsys.readouterr().err
    assert status == 2 and "over --max-memory 0.7 GiB; --chunk" in err and "would fit" in err
    assert not (tmp_path / "r.assoc.tsv.partial").exists()  # stopped before writing anything
    status = main(["scan", "--bfile", str(MOUSE), "--out", str(tmp_path / "r"), "--max-memory", "0.1"])
    err = capsys.readouterr().err
    assert status == 2 and "no chunk size fits" in err


def test_eigendecomposition_cache_reused_and_stale_refused(capsys, tmp_path):
    args = ["--bfile", DEMO, "--mode", "null", "--eigen", tmp_path / "cache" / "demo"]
    _scan(capsys, *args, "--out", tmp_path / "first")
    assert (tmp_path / "cache" / "demo.eigen.json").exists()
    written = (tmp_path / "cache" / "demo.eigenvectors.npy").stat().st_mtime_ns
    _scan(capsys, *args, "--out", tmp_path / "second")
    assert (tmp_path / "cache" / "demo.eigenvectors.npy").stat().st_mtime_ns == written  # reused, not rewritten
    assert (tmp_path / "first.assoc.tsv").read_bytes() == (tmp_path / "second.assoc.tsv").read_bytes()
    fam = pd.read_csv(f"{DEMO}.fam", sep=r"\s+", header=None)
    (tmp_path / "remove.txt").write_text(f"{fam[0][5]} {fam[1][5]}\n")
    status = main(["scan", *map(str, args), "--remove", str(tmp_path / "remove.txt"), "--out", str(tmp_path / "x")])
    assert status == 2 and "stale eigendecomposition" in capsys.readouterr().err


def test_bgen_scan_equals_plink_scan_and_hwe_filter(capsys, tmp_path):
    from bgen_writer import hard_call_probabilities, write_bgen, write_sample_file
    from test_plink_and_cli_scan import write_plink

    rng = np.random.default_rng(9)
    n, m = 90, 30
    genotypes = rng.integers(0, 3, size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.02] = np.nan
    genotypes[:, 7] = 1.0
    genotypes[:3, 7] = 0.0  # nearly all heterozygous: far from Hardy-Weinberg
    y = genotypes[:, 0] * 0.5 + rng.normal(size=n)
    write_plink(tmp_path / "g", genotypes, y)
    write_bgen(tmp_path / "g.bgen", hard_call_probabilities(genotypes), compression=2,
               rsids=[f"snp{j}" for j in range(m)])
    # the .sample lists the samples in another order than the phenotype table: matched by ID
    write_sample_file(tmp_path / "g.sample", [f"fam{i}" for i in range(n)], [f"ind{i}" for i in range(n)])
    pheno = pd.DataFrame({"FID": [f"fam{i}" for i in range(n)], "IID": [f"ind{i}" for i in range(n)], "y": y})
    pheno.iloc[::-1].to_csv(tmp_path / "p.txt", sep=" ", index=False, na_rep="NA")
    _scan(capsys, "--bfile", tmp_path / "g", "--out", tmp_path / "bed", "--hwe", "1e-6")
    _scan(capsys, "--bgen", tmp_path / "g.bgen", "--sample", tmp_path / "g.sample", "--pheno", tmp_path / "p.txt",
          "--out", tmp_path / "bgen", "--hwe", "1e-6")
    bed = pd.read_csv(tmp_path / "bed.assoc.tsv", sep="\t")
    bgen = pd.read_csv(tmp_path / "bgen.assoc.tsv", sep="\t")
    assert bed.status[7] == "hwe" and (bed.status == "hwe").sum() == 1
    columns = [c for c in bed.columns if c not in ("allele1", "allele0", "chr", "ps")]
    pd.testing.assert_frame_equal(bed[columns], bgen[columns], rtol=1e-9)
