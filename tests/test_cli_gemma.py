"""`jaxlmm grm` and `jaxlmm scan` on GEMMA's mouse HS1940 example, PLINK and BIMBAM, against GEMMA 0.98.5's own
outputs (tests/fixtures/gemma, made by make_gemma_fixtures.sh): the -gk 1 kinship, and -lmm 4 -n 1 with a kinship
file given (PLINK) and with our own kinship (BIMBAM)."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from jaxlmm.io.kinship_files import read_kinship
from test_gemma import FIXTURES, assert_matches_gemma

ROOT = Path(__file__).parent.parent


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "jaxlmm.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _gemma(name):
    with gzip.open(FIXTURES / name, "rt") as handle:
        return pd.read_csv(handle, sep="\t", dtype={"chr": str})


def _compare(prefix, reference, null_json):
    table = pd.read_csv(f"{prefix}.assoc.tsv", sep="\t", dtype={"chr": str})
    ref = _gemma(reference)
    assert len(table) == 12226  # every input variant, filtered ones with their status
    ok = table[table.status == "ok"]
    assert list(ok.rs) == list(ref.rs)  # GEMMA prints only the analyzed ones
    ok = ok.set_index("rs").loc[ref.rs]
    assert_matches_gemma(ok, ref)
    assert (ok.chr.to_numpy() == ref.chr.to_numpy()).all() and (ok.ps.to_numpy() == ref.ps.to_numpy()).all()
    log = Path(f"{prefix}.log.txt").read_text()
    null = json.loads((FIXTURES / null_json).read_text())
    assert "samples analyzed: 1410 of 1940" in log and "rows in == rows out: True" in log
    assert f"pve {null['pve']:.6g} (se {null['pve_se']:.6g})" in log
    assert f"vg {null['vg']:.6g}" in log and f"ve {null['ve']:.6g}" in log


def test_grm_then_scan_with_kinship_file_plink(tmp_path):
    stdout = _cli("grm", "--bfile", str(FIXTURES / "mouse_hs1940"), "--out", str(tmp_path / "mouse"))
    assert "10768 variants" in stdout
    kinship = read_kinship(tmp_path / "mouse.cXX.txt")
    summary = json.loads((FIXTURES / "kinship_gk1_summary.json").read_text())
    np.testing.assert_allclose(kinship[:5], np.array(summary["first_5_rows"]), atol=1e-6)
    np.testing.assert_allclose(np.diag(kinship), np.array(summary["diagonal"]), atol=1e-6)
    _cli("scan", "--bfile", str(FIXTURES / "mouse_hs1940"), "--pheno-col", "1", "--kinship",
         str(tmp_path / "mouse.cXX.txt"), "--out", str(tmp_path / "plink"))
    _compare(tmp_path / "plink", "mouse_lmm4.assoc.txt.gz", "null_model.json")


def test_bimbam_scan_with_own_kinship(tmp_path):
    stdout = _cli("scan", "--config", "configs/mouse_hs1940_bimbam.toml", "--out", str(tmp_path / "bimbam"))
    assert "kinship: computed (-gk 1) from 10768 variants" in stdout
    _compare(tmp_path / "bimbam", "mouse_bimbam_lmm4.assoc.txt.gz", "null_model_bimbam.json")


def test_pheno_col_by_name_from_an_id_table(tmp_path):
    # a FID/IID phenotype table built from the .fam: same samples, one phenotype named pheno1
    fam = pd.read_csv(FIXTURES / "mouse_hs1940.fam", sep=r"\s+", header=None)
    table = pd.DataFrame({"FID": fam[0], "IID": fam[1], "pheno1": fam[5]}).iloc[::-1]  # another order
    table.to_csv(tmp_path / "p.txt", sep=" ", index=False, na_rep="NA")
    config = tmp_path / "c.toml"
    config.write_text(f'bfile = "{FIXTURES / "mouse_hs1940"}"\npheno = "p.txt"\nmode = "null"\nout = "x"\n')
    stdout = _cli("scan", "--config", str(config), "--pheno-col", "pheno1")
    assert "samples analyzed: 1410 of 1940" in stdout and "1940 samples matched" in stdout
