"""The association table's column-wise text (jaxlmm.io.text_columns) against Python's own % formatting."""

import numpy as np

from jaxlmm.io import results, text_columns
from jaxlmm.io.plink import Bim


def _rows(matrix):
    return [row[row != 0].tobytes().decode() for row in matrix.reshape(-1, matrix.shape[-1])]


def _hard_floats(rng):
    """Random magnitudes over the whole float64 range, plus the cases a scaled rounding can get wrong: decimal
    half-way points of the seventh digit, neighbours of powers of ten, exact binary ties, subnormals, signed zeros
    and non-finite values."""
    spread = rng.standard_normal(20000) * 10.0 ** rng.integers(-320, 308, 20000)
    halves = [float(f"{d}e{e}") for d in (1.0000005, 9.9999995, 1.2345675, 5.0000005, 9.9999994999)
              for e in range(-40, 40)]
    tens = 10.0 ** np.arange(-300, 301, 3.0)
    special = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 5e-324, -5e-324, 2.2250738585072014e-308,
               1.7976931348623157e308, 1234567.5, 1234568.5, 0.5, 2.5e-5, 9.9999996e99, 9.999999e99, 1e100]
    return np.concatenate([spread, rng.uniform(-1, 1, 5000), halves, -np.asarray(halves), tens,
                           np.nextafter(tens, 0), np.nextafter(tens, np.inf), special])


def test_exponent_text_prints_every_float_as_python_does():
    values = _hard_floats(np.random.default_rng(0))
    assert _rows(text_columns.exponent_text(values)) == ["%.6e" % v for v in values]
    grid = values[:600].reshape(40, 15)  # any shape: one field per entry
    assert _rows(text_columns.exponent_text(grid)) == ["%.6e" % v for v in grid.ravel()]


def test_integer_and_string_text_print_as_python_does():
    rng = np.random.default_rng(1)
    integers = np.concatenate([rng.integers(-10**15, 10**15, 2000), [0, 1, -1, 9, 10, 9999, 10000, -10000,
                                                                      10**18, -(10**18), 123456789]])
    assert _rows(text_columns.integer_text(integers)) == ["%d" % k for k in integers]
    assert _rows(text_columns.integer_text(np.array([True, False]))) == ["1", "0"]
    strings = np.array(["rs1", "", "chr10_ÄÖ", "a" * 40, "ok"])
    assert _rows(text_columns.string_text(strings)) == list(strings)
    assert _rows(text_columns.string_text(np.array(["1", "X", "MT"]))) == ["1", "X", "MT"]


def _python_rows(columns, bim, variants):
    """The table rows formatted one row at a time with %, the reference for format_rows."""
    annotation = {"chr": bim.chrom, "rs": bim.rsid, "ps": bim.pos, "allele1": bim.allele1, "allele0": bim.allele0}
    lists, formats = [], []
    for name in results.GEMMA_COLUMNS + results.EXTRA_COLUMNS:
        if name in annotation:
            values, spec = np.asarray(annotation[name])[variants], "%s"
        else:
            values = np.asarray(columns[{"l_remle": "lambda_remle", "l_mle": "lambda_mle"}.get(name, name)])
            if values.dtype == bool:
                values, spec = values.astype(np.int8), "%d"
            elif np.issubdtype(values.dtype, np.integer) or values.dtype.kind in "US":
                spec = "%s"
            else:
                values, spec = values.astype(float), "%.6e"
        lists.append(values.tolist())
        formats.append(spec)
    row = "\t".join(formats) + "\n"
    return "".join(row % values for values in zip(*lists)).encode()


def test_format_rows_equals_one_percent_format_per_row():
    rng = np.random.default_rng(2)
    m, b = 700, 300
    bim = Bim(np.array(["1", "X", "22"] * (m // 3) + ["1"] * (m % 3)), np.array([f"rs{i}" for i in range(m)]),
              np.zeros(m), rng.integers(1, 3 * 10**8, m), np.array(["A", "ÄT"] * (m // 2)), np.array(["G"] * m))
    floats = _hard_floats(rng)
    columns = {name: rng.choice(floats, b) for name in ("af", "beta", "se", "logl_H1", "lambda_remle", "lambda_mle",
                                                         "p_wald", "p_lrt", "p_score", "s2_g", "s2_e",
                                                         "logl_remle", "logl_mle", "wald", "pve")}
    columns.update(n_miss=rng.integers(0, 50, b), converged=rng.random(b) < 0.9, iterations=rng.integers(0, 60, b),
                   status=rng.choice(np.array(["ok", "low_maf", "not_converged"]), b))
    variants = slice(250, 250 + b)
    assert results.format_rows(columns, bim, variants) == _python_rows(columns, bim, variants)
    # annotation that is not text or integers prints as Python's str (as "%s" did)
    float_positions = bim._replace(pos=rng.uniform(0, 1e6, m))
    assert results.format_rows(columns, float_positions, variants) == _python_rows(columns, float_positions, variants)
