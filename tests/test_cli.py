"""The command line, run as a user would."""

import json
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "lme4"


def run(*args):
    return subprocess.run([sys.executable, "-m", "jaxlmm.cli", *args], capture_output=True, text=True)


def test_fit_json_matches_lme4():
    out = run("fit", "--data", str(FIXTURES / "balanced.csv"), "--formula", "y ~ x1 + (1|g)", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    ref = json.loads((FIXTURES / "balanced.json").read_text())["REML"]
    assert abs(got["fixef"]["(Intercept)"] - ref["fixef"]["(Intercept)"]) < 1e-6
    assert abs(got["reml_criterion"] - ref["reml_criterion"]) < 1e-6
    assert set(got) >= {"fixef", "se", "varcomp", "reml_criterion", "loglik", "ranef", "ranef_var", "pve",
                        "singular", "converged"}
    assert set(got["varcomp"]) == {"g", "residual"}
    assert set(got["pve"]) == {"fixed", "g", "residual"}


def test_fit_ml_summary():
    out = run("fit", "--data", str(FIXTURES / "boundary.csv"), "--formula", "y ~ x1 + (1|g)", "--ml")
    assert out.returncode == 0, out.stderr
    assert "maximum likelihood" in out.stdout and "singular" in out.stdout
    assert "Fixed effects:" in out.stdout


def test_fit_bad_input_is_a_clean_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("y,x,g\n1,2,a\n,3,b\n2,1,a\n")
    out = run("fit", "--data", str(bad), "--formula", "y ~ x + (1|g)")
    assert out.returncode == 2
    assert "bad.csv" in out.stderr and "row" in out.stderr and "Traceback" not in out.stderr
    out = run("fit", "--data", str(tmp_path / "absent.csv"), "--formula", "y ~ x + (1|g)")
    assert out.returncode == 2 and "absent.csv" in out.stderr
    out = run("fit", "--data", str(FIXTURES / "balanced.csv"), "--formula", "y ~ nope + (1|g)")
    assert out.returncode == 2 and "nope" in out.stderr and "Traceback" not in out.stderr


def test_demo_prints_seed_tables():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    assert "variant3" in out.stdout and "4.384914158" in out.stdout
    assert "Fixed effects (all variants) PVE: 92.48 %" in out.stdout
    assert "not identified" in out.stdout


def test_jaxlmm_leaves_global_jax_settings_alone():
    """Importing jaxlmm and fitting runs in float64 in scope only: the user's x64 flag stays as it was."""
    script = ("import jax, numpy as np, jaxlmm\n"
              "r = jaxlmm.fit(np.array([1., 2, 4, 3, 6, 5]), groups=[1, 1, 2, 2, 3, 3])\n"
              "print(jax.config.jax_enable_x64, r.fixef.dtype)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "float64"]
