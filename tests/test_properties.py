"""Property-based tests (hypothesis): random valid scans agree with textbook formulas on V computed by numpy;
results do not change with the phenotype's scale (1e-6 .. 1e6), also for very unbalanced groups and a
near-singular kinship; random corruptions of valid input files give clean errors, never a crash."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlmm.cli import main
from jaxlmm.scan import scan
from test_plink_and_cli_scan import write_plink

SLOW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _textbook_reml(log_lambda, y, X, K):
    """lme4's profiled REML criterion from V / s2_e = lambda K + I, by slogdet and solve."""
    n, p = X.shape
    H = np.exp(log_lambda) * K + np.eye(n)
    Hi_X, Hi_y = np.linalg.solve(H, X), np.linalg.solve(H, y)
    XHX = X.T @ Hi_X
    beta = np.linalg.solve(XHX, X.T @ Hi_y)
    q = (y - X @ beta) @ np.linalg.solve(H, y - X @ beta)
    return (np.linalg.slogdet(H)[1] + np.linalg.slogdet(XHX)[1]
            + (n - p) * (1 + np.log(2 * np.pi * q / (n - p))))


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    # few shapes: each new (n, kernel rank) compiles the scan again (~7 s), so three in all: groups at n = 16
    # (4 levels, all present but with probability ~1 %), a kinship at n = 30 of rank 3 or full rank
    use_groups = draw(st.booleans())
    n = 16 if use_groups else 30
    m = draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 3, size=(n, m)).astype(float)
    covariate = rng.normal(size=n)
    if use_groups:
        labels = rng.integers(0, max(2, n // 4), size=n)
        Z = (labels[:, None] == np.unique(labels)[None, :]).astype(float)
        K = Z @ Z.T
    else:
        W = rng.normal(size=(n, draw(st.sampled_from([3, 2 * n]))))
        K = W @ W.T / W.shape[1]
        labels = None
    scale = 10.0 ** draw(st.integers(-3, 3))
    y = scale * (0.5 * covariate + np.linalg.cholesky(K + 1e-9 * np.eye(n)) @ rng.normal(size=n)
                 * draw(st.floats(0.0, 2.0)) + rng.normal(size=n))
    return y, X, covariate, K, labels


@SLOW
@given(problems())
def test_random_scans_match_textbook_formulas(problem):
    y, genotypes, covariate, K, labels = problem
    random = {"groups": labels} if labels is not None else {"kinship": K, "center_kinship": False}
    result = scan(y, genotypes, covariate, min_maf=0.0, **random).columns
    n = y.shape[0]
    for j in range(genotypes.shape[1]):
        if result["status"][j] != "ok":
            assert result["status"][j] in ("monomorphic", "collinear") and np.isnan(result["p_wald"][j])
            continue
        for key in ("beta", "se", "p_wald", "p_lrt", "p_score", "lambda_remle"):
            assert np.isfinite(result[key][j]), key
        X = np.c_[np.ones(n), covariate, genotypes[:, j]]
        lam, s2_e = result["lambda_remle"][j], result["s2_e"][j]
        V = s2_e * (lam * K + np.eye(n))
        XVX = X.T @ np.linalg.solve(V, X)
        beta = np.linalg.solve(XVX, X.T @ np.linalg.solve(V, y))
        np.testing.assert_allclose(result["beta"][j], beta[2], rtol=1e-6, atol=1e-9 * np.abs(y).max())
        np.testing.assert_allclose(result["se"][j], np.sqrt(np.linalg.inv(XVX)[2, 2]), rtol=1e-6)
        # the REML optimum: zero slope in log lambda unless at GEMMA's interval ends [1e-5, 1e5]
        t = np.log(lam)
        if -11.5 + 1e-3 < t < 11.5 - 1e-3:
            h = 1e-4
            slope = (_textbook_reml(t + h, y, X, K) - _textbook_reml(t - h, y, X, K)) / (2 * h)
            assert abs(slope) < 1e-4, slope


@pytest.mark.parametrize("structure", ["unbalanced_groups", "near_singular_kinship"])
def test_scale_invariance(structure):
    rng = np.random.default_rng(11)
    n, m = 150, 20
    if structure == "unbalanced_groups":
        labels = np.r_[np.zeros(100, int), np.arange(1, 51)]  # one group of 100 and 50 singletons
        random = {"groups": labels}
        u = rng.normal(size=51)[labels]
    else:
        W = rng.normal(size=(n, 3))  # rank 3 plus rounding: near-singular
        K = W @ W.T / 3 + 1e-9 * np.eye(n)
        random = {"kinship": K}
        u = W @ rng.normal(size=3)
    genotypes = rng.integers(0, 3, size=(n, m)).astype(float)
    y = genotypes[:, 0] * 0.3 + u + rng.normal(size=n)
    reference = scan(y, genotypes, **random).columns
    for scale in (1e-6, 1e6):
        scaled = scan(scale * y, genotypes, **random).columns
        assert list(scaled["status"]) == list(reference["status"])
        for key in ("p_wald", "p_lrt", "p_score", "lambda_remle", "lambda_mle"):
            np.testing.assert_allclose(scaled[key], reference[key], rtol=1e-6, err_msg=f"{key} at {scale}")
        np.testing.assert_allclose(scaled["beta"], scale * reference["beta"], rtol=1e-6)
        np.testing.assert_allclose(scaled["s2_e"], scale**2 * reference["s2_e"], rtol=1e-6)
        assert scaled["converged"].all()


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("valid")
    rng = np.random.default_rng(5)
    genotypes = rng.integers(0, 3, size=(30, 10)).astype(float)
    write_plink(folder / "v", genotypes, genotypes[:, 0] + rng.normal(size=30))
    return {ext: (folder / f"v.{ext}").read_bytes() for ext in ("bed", "bim", "fam")}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["bed", "bim", "fam"]), position=st.floats(0, 1),
       action=st.sampled_from(["truncate", "byte", "insert", "delete_line"]), byte=st.integers(0, 255))
def test_corrupted_files_give_clean_errors(valid_files, tmp_path_factory, capsys, target, position, action, byte):
    folder = tmp_path_factory.mktemp("corrupt")
    files = dict(valid_files)
    content = bytearray(files[target])
    at = int(position * (len(content) - 1))
    if action == "truncate":
        content = content[:at]
    elif action == "byte":
        content[at] = byte
    elif action == "insert":
        content[at:at] = bytes([byte]) * 3
    else:
        lines = bytes(content).split(b"\n")
        del lines[int(position * (len(lines) - 1))]
        content = bytearray(b"\n".join(lines))
    files[target] = bytes(content)
    for ext, data in files.items():
        (folder / f"c.{ext}").write_bytes(data)
    status = main(["scan", "--bfile", str(folder / "c"), "--out", str(folder / "r"), "--mode", "null"])
    captured = capsys.readouterr()
    assert status in (0, 2), captured.err
    if status == 2:
        assert captured.err.startswith("jaxlmm scan: error: ") and "Traceback" not in captured.err
        assert "c." in captured.err or "sample" in captured.err or "variant" in captured.err, captured.err
    else:  # a corruption that leaves a valid file (e.g. a genotype byte changed): every variant has a row
        rows = (folder / "r.assoc.tsv").read_text().count("\n") - 1
        assert rows == sum(1 for line in files["bim"].split(b"\n") if line.strip())  # the .bim's variants
