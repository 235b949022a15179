"""Command line: ``jaxlmm fit | scan | grm | merge | demo``. A thin layer: flags and TOML -> validated config ->
library call -> writers; the progress bar lives here only."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

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


def _scan_config(args):
    from .config import SCAN_KEYS, scan_config

    flags = {key: getattr(args, key, None) for key in SCAN_KEYS}
    for key in ("plots", "resume", "loco", "distributed"):
        flags[key] = True if flags[key] else None  # absent switches leave the config file's value
    return scan_config(args.config, **flags)


def _progress(stream=sys.stderr):
    """A one-line progress bar (variants done, rate, time left) on a terminal; None (silent) otherwise."""
    if not stream.isatty():
        return None
    began = time.perf_counter()

    def show(done: int, total: int) -> None:
        elapsed = max(time.perf_counter() - began, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else float("inf")
        filled = int(30 * done / max(total, 1))
        stream.write(f"\r[{'#' * filled:<30}] {done:,}/{total:,} variants  {rate:,.0f}/s  {left:,.0f} s left ")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def _scan(args) -> int:
    config = _scan_config(args)
    if config.distributed:
        from .distributed import run_distributed

        print("\n".join(run_distributed(config, on_chunk=_progress())))
        return 0
    from .pipeline import run_scan

    print("\n".join(run_scan(config, on_chunk=_progress())))
    return 0


def _grm(args) -> int:
    from .io.kinship_files import write_kinship
    from .pipeline import kinship_for, make_parent_folder, read_inputs

    config = _scan_config(args)._replace(kinship=None, groups=None, covar=None)
    inputs = read_inputs(config)
    matrix, note = kinship_for(config, inputs)
    path = config.out + (".cXX" if config.gk == 1 else ".sXX") + (".npy" if args.npy else ".txt")
    make_parent_folder(path)
    write_kinship(path, matrix)
    print("\n".join([*inputs.notes, note, f"wrote {path} ({matrix.shape[0]} x {matrix.shape[1]})"]))
    return 0


def _merge(args) -> int:
    from .merge import merge_parts

    print("\n".join(merge_parts(args.out)))
    return 0


def _demo(args) -> int:
    from .demo import render

    print(render())
    return 0


def _input_flags(parser) -> None:
    parser.add_argument("--config", help="TOML file of settings (flags override it)")
    parser.add_argument("--bfile", help="PLINK prefix (.bed/.bim/.fam)")
    parser.add_argument("--bgen", help="BGEN v1.2 file (dosages of the first allele; zlib/zstd)")
    parser.add_argument("--sample", help="Oxford .sample file for --bgen (sample IDs)")
    parser.add_argument("--geno", help="BIMBAM mean-genotype file (plain or .gz)")
    parser.add_argument("--pheno", help="phenotype table (BIMBAM with --geno; FID IID ... with --bfile)")
    parser.add_argument("--anno", help="BIMBAM annotation file (rs, position, chromosome)")
    parser.add_argument("--pheno-col", help="phenotype column: 1-based number (GEMMA -n) or name (default 1)")
    parser.add_argument("--gk", type=int, choices=(1, 2), help="kinship: 1 centred (default), 2 standardized")
    parser.add_argument("--out", help="output prefix")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Linear mixed models in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit one lme4-style model to a CSV table")
    fit.add_argument("--data", required=True, help="CSV file with a header row")
    fit.add_argument("--formula", required=True, help='lme4 syntax, e.g. "y ~ x + (1|g)", "y ~ x + (x|g) + (1|h)", "y ~ 1 + (1|a/b)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    fit.set_defaults(run=_fit)
    scan = sub.add_parser("scan", help="variant scan (GEMMA -lmm 4 tests) of PLINK or BIMBAM genotypes",
                          description="Flags override the --config file; see configs/ for documented examples.")
    _input_flags(scan)
    scan.add_argument("--covar", help="covariate table (FID IID ...; BIMBAM rows with --geno)")
    scan.add_argument("--kinship", help="n x n kinship (.npy or GEMMA text); computed (--gk) when absent")
    scan.add_argument("--groups", help="column of the covariate/phenotype table fitted as (1|groups) instead")
    scan.add_argument("--mode", choices=("exact", "null"), help="per-variant REML/ML (default) or null lambda")
    scan.add_argument("--chunk", type=int,
                      help="variants per batch (default: 2^21 / analyzed samples as a power of two, 512 to 4096)")
    scan.add_argument("--min-maf", type=float, help="minor allele frequency filter (default 0.01)")
    scan.add_argument("--max-missing", type=float, help="missing-call fraction filter (default 0.05)")
    scan.add_argument("--max-iter", type=int, help="Newton iterations per variant (default 30)")
    scan.add_argument("--rotation", choices=("float64", "float32"), help="genotype rotation precision")
    scan.add_argument("--plots", action="store_true", help="also write PREFIX.manhattan.png and PREFIX.qq.png")
    scan.add_argument("--resume", action="store_true", help="go on from the partial results of a killed run")
    scan.add_argument("--part", help="i/n: scan the i-th of n contiguous shares (join them with jaxlmm merge)")
    scan.add_argument("--hwe", type=float, help="Hardy-Weinberg exact test p-value filter (status hwe; default 0)")
    scan.add_argument("--loco", action="store_true", help="leave one chromosome out: each chromosome's variants "
                      "with the kinship of all others (-gk of the other chromosomes; per-chromosome sums held at "
                      "most 4 GiB at once, further passes over the genotypes beyond that)")
    scan.add_argument("--keep", help="file of samples (FID IID) to analyze; others are left out")
    scan.add_argument("--remove", help="file of samples (FID IID) to leave out")
    scan.add_argument("--snps", help="file of variant IDs to test (first field per line)")
    scan.add_argument("--ksnps", help="file of variant IDs to build the kinship from")
    scan.add_argument("--cat", help="comma-separated categorical covariate columns (indicator coded)")
    scan.add_argument("--eigen", help="file prefix caching the kinship's eigendecomposition (reused when its key "
                      "matches the kinship, refused when stale)")
    scan.add_argument("--distributed", action="store_true", help="multi-process run on jax.distributed: each "
                      "process scans its share, process 0 merges")
    scan.add_argument("--coordinator", help="host:port of process 0 (jax.distributed; default: from the cluster)")
    scan.add_argument("--num-processes", type=int, help="processes in a --distributed run")
    scan.add_argument("--process-id", type=int, help="this process's index in a --distributed run")
    scan.add_argument("--max-memory", type=float, help="GiB this run may use; stop early with advice if more")
    scan.set_defaults(run=_scan)
    grm = sub.add_parser("grm", help="kinship matrix (GEMMA -gk 1 centred / -gk 2 standardized)")
    _input_flags(grm)
    grm.add_argument("--npy", action="store_true", help="write PREFIX.cXX.npy (exact) instead of GEMMA text")
    grm.set_defaults(run=_grm)
    merge = sub.add_parser("merge", help="join PREFIX.part{i}of{n}.assoc.tsv of a --part run into PREFIX.assoc.tsv")
    merge.add_argument("--out", required=True, help="the output prefix the parts were written with")
    merge.set_defaults(run=_merge)
    demo = sub.add_parser("demo", help="the seed example: per-variant and full-model PVE tables")
    demo.set_defaults(run=_demo)
    return parser


def _enable_compilation_cache() -> str | None:
    """Keep compiled programs between runs (the scan compiles for ~10 s): JAX's compilation cache, and, in
    subfolders of the same folder, the scan's executables themselves and parsed text kinships (see :func:`main`).
    The CLI is its own process, so setting these here changes nothing for library users. JAXLMM_CACHE_DIR overrides
    the place; empty disables. Returns the folder (None: disabled)."""
    import jax

    directory = os.environ.get("JAXLMM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "jaxlmm", "xla"))
    if not directory:
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


def main(argv=None) -> int:
    """The ``jaxlmm`` command. Called with argv=None (the installed command, ``python -m jaxlmm.cli``) it is its own
    process and keeps, in its cache folder (JAXLMM_CACHE_DIR), JAX's compiled programs, the scan's whole programs
    (:mod:`jaxlmm.executables`: no tracing in a warm run) and the parsed matrices of text kinships
    (:mod:`jaxlmm.io.kinship_files`); called with a list (from Python, e.g. tests) it changes no JAX setting of
    the calling program and keeps nothing."""
    args = build_parser().parse_args(argv)
    from .executables import kept_in
    from .io import kinship_files

    cache = _enable_compilation_cache() if argv is None else None
    try:
        with kept_in(None if cache is None else os.path.join(cache, "executables")), \
                kinship_files.kept_in(None if cache is None else os.path.join(cache, "kinships")):
            return args.run(args)
    except InputError as err:
        print(f"jaxlmm {args.command}: error: {err}", file=sys.stderr)
        return 2


def command() -> None:
    """The installed ``jaxlmm`` command and ``python -m jaxlmm.cli``: :func:`main`, then the process ends at once.

    By then every output is closed (tables published, logs and plots written); the standard streams are flushed
    here. Skipped is only the teardown that Python and JAX would do next, which frees the XLA client, its programs
    and every module one by one: ~0.45 s of a ~4 s mouse HS1940 scan, for nothing. Errors that escape :func:`main`
    and --distributed runs (JAX shuts its coordination down at exit) take the normal way out.

    The objects made by the imports so far (~140,000, JAX's above all) live until the end, so they are moved out of
    the garbage collector's reach (``gc.freeze``): its full collections walked them again and again, 0.15-0.2 s of
    the main thread in a mouse HS1940 scan (0.06-0.08 s of collections remain)."""
    import gc

    gc.freeze()
    code = main()
    if "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized():
        sys.exit(code)
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    command()
