"""The scan job behind ``jaxlmm scan``: files in, association table and log out.

Steps: open the genotypes (:mod:`jaxlmm.io.plink` or :mod:`jaxlmm.io.bimbam`) -> read the phenotype, covariate
and group columns and match their samples to the genotype file's (:mod:`jaxlmm.io.tables`) -> load or compute the
kinship (GEMMA ``-gk``: filters judged on the analyzed samples, matrix over all samples) -> :func:`jaxlmm.scan.
prepare_scan` -> stream :func:`jaxlmm.scan.scan_chunks` into a :class:`jaxlmm.io.results.ResumableTable` -> log.

Every input variant gets one row, in input order, with a status; rows in == rows out is checked at the end.
"""

from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

import numpy as np

from .config import ScanConfig, part_share
from .io import tables
from .io.bimbam import BimbamReader
from .io.kinship_files import read_kinship
from .io.plink import BedReader
from .io.results import ResumableTable, format_rows, genomic_inflation, read_table
from .kinship import filtered_relatedness
from .scan import prepare_scan, scan_chunks
from . import validate
from .validate import InputError


class Inputs(NamedTuple):
    """What the files give, on the genotype file's samples.

    genotypes: reader with ``shape`` (n_all, M) and ``[rows, a:b]``; bim: variant annotation
    analyzed: (n_all,) bool, samples in the analysis; y: (n,) phenotype of the analyzed samples
    covariates: (n, c0) or None (constant columns removed: the intercept is always fitted); covariate_names (c0,)
    groups: (n,) labels or None; notes: lines for the log (sample counts, dropped columns)
    """

    genotypes: object
    bim: object
    analyzed: np.ndarray
    y: np.ndarray
    covariates: np.ndarray | None
    groups: np.ndarray | None
    covariate_names: tuple
    notes: tuple


def read_inputs(config: ScanConfig) -> Inputs:
    """Open the genotypes and read and match the phenotype, covariates and groups (errors name file and line)."""
    if config.bfile is not None:
        genotypes = BedReader(config.bfile)
        fid, iid = genotypes.fam.fid, genotypes.fam.iid
        pheno_table = (tables.read_id_table(config.pheno) if config.pheno
                       else tables.read_fam_table(config.bfile + ".fam"))
        read_other = tables.read_id_table
    else:
        genotypes = BimbamReader(config.geno, config.anno)
        n_all = genotypes.shape[0]
        fid = iid = np.array([str(i + 1) for i in range(n_all)])
        pheno_table = tables.read_bimbam_table(config.pheno)
        read_other = tables.read_bimbam_table
    n_all = genotypes.shape[0]
    pairs = list(zip(fid, iid))
    if len(set(pairs)) != n_all:
        duplicate = next(i for i, pair in enumerate(pairs) if pairs.index(pair) != i)
        raise InputError(f"{config.bfile}.fam: line {duplicate + 1}: sample {fid[duplicate]} {iid[duplicate]} "
                         "appears more than once")
    notes = [f"samples in genotype file: {n_all}"]
    pheno_rows = tables.match_samples(fid, iid, pheno_table)
    y_all = _on_samples(tables.numeric_column(pheno_table, config.pheno_col, tables.PHENOTYPE_MISSING), pheno_rows)
    notes.append(f"phenotype {config.pheno_col!s} from {pheno_table.path}: {int((pheno_rows >= 0).sum())} samples "
                 f"matched, {int(np.isnan(y_all).sum())} without a value")
    keep = ~np.isnan(y_all)
    covariates, covar_table, kept_names = None, None, []
    if config.covar:
        covar_table = read_other(config.covar)
        covar_rows = tables.match_samples(fid, iid, covar_table)
        columns = []
        for j, name in enumerate(covar_table.names):
            values = _on_samples(tables.numeric_column(covar_table, j + 1), covar_rows)
            finite = values[~np.isnan(values)]
            if finite.size and finite.min() == finite.max():
                notes.append(f"covariate {name!r} is constant: taken as the intercept (always fitted)")
                continue
            columns.append(values)
            kept_names.append(name)
        dropped = keep & np.isnan(np.column_stack(columns)).any(axis=1) if columns else np.zeros(n_all, bool)
        notes.append(f"covariates from {covar_table.path}: {', '.join(kept_names) or 'none'}; "
                     f"{int(dropped.sum())} samples dropped for a missing value")
        keep &= ~dropped
        covariates = np.column_stack(columns) if columns else None
    groups = None
    if config.groups is not None:
        source = covar_table if covar_table is not None and config.groups in covar_table.names else pheno_table
        labels = tables.label_column(source, config.groups)
        group_rows = tables.match_samples(fid, iid, source)
        groups = np.array([labels[r] if r >= 0 else None for r in group_rows], dtype=object)
        missing_group = keep & (groups == None)  # noqa: E711 (elementwise)
        notes.append(f"groups: column {config.groups!r} of {source.path}; {int(missing_group.sum())} samples "
                     "dropped for a missing label")
        keep &= ~missing_group
    if not keep.any():
        raise InputError("no sample has a phenotype value and complete covariates; nothing to analyze")
    notes.append(f"samples analyzed: {int(keep.sum())} of {n_all}")
    return Inputs(genotypes, genotypes.bim, keep, y_all[keep],
                  None if covariates is None else covariates[keep], None if groups is None else groups[keep],
                  tuple(kept_names), tuple(notes))


def _on_samples(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Table values on the genotype file's samples; NaN where the table lacks a sample."""
    out = np.full(rows.shape[0], np.nan)
    out[rows >= 0] = values[rows[rows >= 0]]
    return out


class AnalyzedRows:
    """Column-sliceable view of a genotype reader restricted to the analyzed samples."""

    def __init__(self, reader, rows: np.ndarray):
        self.reader, self.rows = reader, rows
        self.shape = (int(rows.sum()), reader.shape[1])

    def __getitem__(self, index):
        return self.reader[self.rows, index[1]]


def kinship_for(config: ScanConfig, inputs: Inputs) -> tuple[np.ndarray, str]:
    """(n_all, n_all) kinship in genotype sample order, and a line for the log."""
    n_all = inputs.genotypes.shape[0]
    if config.kinship:
        matrix = read_kinship(config.kinship)
        if matrix.shape[0] != n_all:
            raise InputError(f"{config.kinship}: {matrix.shape[0]} x {matrix.shape[0]} kinship, but the genotype "
                             f"file has {n_all} samples (a kinship covers all of them, in their order)")
        matrix = validate.kinship(matrix, n_all, name=config.kinship, atol=1e-6, check_psd=False)
        return matrix, f"kinship: {config.kinship}"
    matrix, used = filtered_relatedness(inputs.genotypes, inputs.analyzed, config.min_maf, config.max_missing,
                                        standardize=config.gk == 2)
    return matrix, f"kinship: computed (-gk {config.gk}) from {used} variants"


def variant_range(config: ScanConfig, m: int, chunk_size: int) -> tuple[int, int]:
    """Variants [start, stop) of this run: all, or the i-th of n contiguous shares whose edges fall on chunk
    boundaries (so every chunk holds the same variants as in a whole run)."""
    if config.part is None:
        return 0, m
    i, n = part_share(config.part)
    chunks = -(-m // chunk_size)
    return min(m, (i - 1) * chunks // n * chunk_size), min(m, i * chunks // n * chunk_size)


def fingerprint(config: ScanConfig) -> dict:
    """Inputs (paths, sizes, modification times) and result-changing settings, to refuse a mismatched resume."""
    files = {}
    for key in ("bfile", "geno", "pheno", "anno", "covar", "kinship"):
        value = getattr(config, key)
        paths = [value + ext for ext in (".bed", ".bim", ".fam")] if key == "bfile" and value else [value]
        for path in filter(None, paths):
            if os.path.exists(path):
                stat = os.stat(path)
                files[os.path.abspath(path)] = [stat.st_size, int(stat.st_mtime)]
    settings = config._replace(resume=False, plots=False)._asdict()
    return {"files": files, "settings": settings, "version": 1}


def make_parent_folder(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the output folder {folder}: {err}") from None


def output_path(config: ScanConfig) -> str:
    if config.part is None:
        return config.out + ".assoc.tsv"
    i, n = part_share(config.part)
    return f"{config.out}.part{i}of{n}.assoc.tsv"


def run_scan(config: ScanConfig, on_chunk: Callable[[int, int], None] | None = None) -> list:
    """Run the scan a config describes; returns the log lines (also written to ``out.log.txt`` or the part's log).

    on_chunk(done, total): called after each chunk is written (variants of this run done / to do).
    """
    import jax.numpy as jnp

    began = time.perf_counter()
    inputs = read_inputs(config)
    lines = [f"jaxlmm scan: {_describe(config)}", *inputs.notes]
    if config.groups is not None:
        random = {"groups": inputs.groups}
        lines.append(f"random effect: (1|{config.groups}), {len(set(inputs.groups))} levels")
    else:
        kinship, note = kinship_for(config, inputs)
        random = {"kinship": kinship[np.ix_(inputs.analyzed, inputs.analyzed)]}
        lines.append(note)
    try:
        prepared = prepare_scan(inputs.y, inputs.covariates, mode=config.mode, chunk_size=config.chunk,
                                min_maf=config.min_maf, max_missing=config.max_missing, max_iter=config.max_iter,
                                rotation_dtype=jnp.dtype(config.rotation),
                                covariate_names=inputs.covariate_names or None, **random)
    except InputError as err:  # name the files the model came from
        sources = [config.bfile or config.geno, config.pheno, config.covar, config.kinship]
        raise InputError(f"{', '.join(filter(None, sources))}: {err}") from None
    m = inputs.genotypes.shape[1]
    start, stop = variant_range(config, m, prepared.chunk_size)
    path = output_path(config)
    make_parent_folder(path)
    table = ResumableTable(path, fingerprint(config), config.resume)
    if table.resumed_from:
        lines.append(f"resumed: {table.resumed_from} rows were already written")
    rows = AnalyzedRows(inputs.genotypes, inputs.analyzed)
    for chunk in scan_chunks(prepared, rows, start + table.resumed_from, stop):
        b = chunk.columns["status"].shape[1]
        first = chunk.offset
        values = {k: v[0] for k, v in chunk.columns.items()}
        table.append(format_rows(values, inputs.bim, slice(first, first + b)), b)
        if on_chunk is not None:
            on_chunk(table.committed_rows, stop - start)
    written = table.finish()
    prefix = path[: -len(".assoc.tsv")]  # out, or out.part{i}of{n}
    null = prepared.null
    results = read_table(path)
    ok = results["status"] == "ok"
    lines += [
        f"variants in: {stop - start}" + (f" (part {config.part} of {m})" if config.part else "")
        + f"; rows out: {len(results)}; " + ", ".join(f"{s}: {c}" for s, c in results["status"].value_counts(
            sort=False).sort_index().items()),
        f"rows in == rows out: {stop - start == len(results) == written}",
        f"null model: lambda {null.lambda_remle[0]:.6g}, vg {null.s2_g[0]:.6g}, ve {null.s2_e[0]:.6g}, "
        f"pve {null.pve[0]:.6g} (se {null.pve_se[0]:.6g}), REML logl {null.logl_remle[0]:.6g}, "
        f"ML logl {null.logl_mle[0]:.6g}",
        f"genomic inflation lambda_GC (p_wald): {genomic_inflation(results['p_wald'][ok].to_numpy()):.4f}",
        f"output: {path}",
    ]
    if config.plots:
        from .plots import manhattan, qq

        lines.append(f"plots: {manhattan(results, prefix + '.manhattan.png')}, {qq(results, prefix + '.qq.png')}")
    lines.append(f"time: {time.perf_counter() - began:.1f} s")
    log_path = prefix + ".log.txt"
    try:
        with open(log_path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    except OSError as err:
        raise InputError(f"cannot write {log_path}: {err}") from None
    if not stop - start == len(results) == written:
        raise InputError(f"rows in ({stop - start}) != rows out ({len(results)}) in {path}")
    return lines


def _describe(config: ScanConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in config._asdict().items() if v is not None and v is not False)
