"""Command line: ``jaxlmm fit``, ``jaxlmm demo``. A thin layer: parse flags, call the library, print."""

from __future__ import annotations

import argparse
import json
import sys

from .validate import InputError


def _fit(args) -> int:
    import pandas as pd

    from .lmer import lmer
    from .report import mixed_summary, mixed_to_dict

    try:
        data = pd.read_csv(args.data)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read data file {args.data!r}: {err}") from None
    try:
        result = lmer(args.formula, data, method="ML" if args.ml else "REML")
    except InputError as err:
        raise InputError(f"{args.data}: {err}") from None
    if args.json:
        print(json.dumps(mixed_to_dict(result), indent=2))
    else:
        print(mixed_summary(result))
    return 0


def _scan(args) -> int:
    import time

    import numpy as np

    from .io.plink import BedReader, read_fam
    from .io.results import genomic_inflation, write_assoc
    from .kinship import passing_variants, relatedness
    from .scan import scan

    start = time.perf_counter()
    reader = BedReader(args.bfile)
    phenotype = read_fam(args.bfile + ".fam", column=5 + args.pheno_col).phenotype
    analyzed = ~np.isnan(phenotype)
    if not analyzed.any():
        raise InputError(f"{args.bfile}.fam: no sample has a value in phenotype column {args.pheno_col}")
    if args.kinship:
        kinship = np.load(args.kinship) if args.kinship.endswith(".npy") else np.loadtxt(args.kinship)
        if kinship.shape != (reader.shape[0], reader.shape[0]):
            raise InputError(f"{args.kinship}: {kinship.shape} kinship, but {args.bfile}.fam has {reader.shape[0]} samples")
    else:
        kinship = relatedness(reader, passing_variants(reader[analyzed, :], args.min_maf, args.max_missing))
    rows = _RowSubset(reader, analyzed)
    result = scan(phenotype[analyzed], rows, kinship=kinship[np.ix_(analyzed, analyzed)], mode=args.mode,
                  chunk_size=args.chunk, min_maf=args.min_maf, max_missing=args.max_missing,
                  variant_names=reader.bim.rsid)
    written = write_assoc(args.out + ".assoc.tsv", result.columns, reader.bim)
    status = result.columns["status"]
    lines = [
        f"jaxlmm scan --bfile {args.bfile} --pheno-col {args.pheno_col} --mode {args.mode}",
        f"samples: {reader.shape[0]} in .fam, {analyzed.sum()} analyzed ({(~analyzed).sum()} missing phenotype)",
        f"variants in: {reader.shape[1]}; rows out: {written}; " + ", ".join(
            f"{s}: {(status == s).sum()}" for s in np.unique(status)),
        f"rows in == rows out: {reader.shape[1] == written}",
        f"null model: lambda {result.null.lambda_remle[0]:.6g}, vg {result.null.s2_g[0]:.6g}, "
        f"ve {result.null.s2_e[0]:.6g}, pve {result.null.pve[0]:.6g} (se {result.null.pve_se[0]:.6g})",
        f"genomic inflation lambda_GC (p_wald): {genomic_inflation(result.columns['p_wald'][status == 'ok']):.4f}",
        f"time: {time.perf_counter() - start:.1f} s",
    ]
    with open(args.out + ".log.txt", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if reader.shape[1] != written:
        raise InputError(f"rows in ({reader.shape[1]}) != rows out ({written})")
    return 0


class _RowSubset:
    """Column-sliceable view of a genotype reader restricted to the analyzed samples."""

    def __init__(self, reader, rows):
        self.reader, self.rows = reader, rows
        self.shape = (int(rows.sum()), reader.shape[1])

    def __getitem__(self, index):
        return self.reader[self.rows, index[1]]


def _demo(args) -> int:
    from .demo import render

    print(render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Linear mixed models in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit one lme4-style model to a CSV table")
    fit.add_argument("--data", required=True, help="CSV file with a header row")
    fit.add_argument("--formula", required=True, help='lme4 syntax, e.g. "y ~ x + (1|g)", "y ~ x + (x|g) + (1|h)", "y ~ 1 + (1|a/b)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    fit.set_defaults(run=_fit)
    scan = sub.add_parser("scan", help="variant scan of a PLINK fileset (GEMMA -lmm 4 tests)")
    scan.add_argument("--bfile", required=True, help="PLINK prefix (.bed/.bim/.fam)")
    scan.add_argument("--pheno-col", type=int, default=1, help="phenotype number in the .fam, 1 = column 6 (GEMMA -n)")
    scan.add_argument("--kinship", help="n x n kinship (.npy or GEMMA text); computed (-gk 1) when absent")
    scan.add_argument("--mode", choices=("exact", "null"), default="exact")
    scan.add_argument("--chunk", type=int, default=512, help="variants per batch")
    scan.add_argument("--min-maf", type=float, default=0.01)
    scan.add_argument("--max-missing", type=float, default=0.05)
    scan.add_argument("--out", required=True, help="output prefix: PREFIX.assoc.tsv and PREFIX.log.txt")
    scan.set_defaults(run=_scan)
    demo = sub.add_parser("demo", help="the seed example: per-variant and full-model PVE tables")
    demo.set_defaults(run=_demo)
    return parser


def _enable_compilation_cache() -> None:
    """Keep compiled programs between runs (the scan compiles for ~10 s). The CLI is its own process, so setting
    this JAX option here changes nothing for library users. JAXLMM_CACHE_DIR overrides the place; empty disables."""
    import os

    import jax

    directory = os.environ.get("JAXLMM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxlmm", "xla"))
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _enable_compilation_cache()
    try:
        return args.run(args)
    except InputError as err:
        print(f"jaxlmm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
