"""The scan job behind ``jaxlmm scan``: files in, association table and log out.

Steps: open the genotypes (:mod:`jaxlmm.io.plink` or :mod:`jaxlmm.io.bimbam`) -> read the phenotype, covariate
and group columns and match their samples to the genotype file's (:mod:`jaxlmm.io.tables`) -> load or compute the
kinship (GEMMA ``-gk``: filters judged on the analyzed samples, matrix over all samples) -> :func:`jaxlmm.scan.
prepare_scan` -> stream :func:`jaxlmm.scan.scan_chunks` into a :class:`jaxlmm.io.results.ResumableTable` -> log.

Every input variant gets one row, in input order, with a status; rows in == rows out is checked at the end.
"""

from __future__ import annotations

import collections
import os
import time
from functools import partial
from typing import Callable, NamedTuple

import numpy as np

from .config import ScanConfig, part_share
from .genotype_chunks import read_genotypes
from .io import tables
from .io.bgen import BgenReader
from .io.bimbam import BimbamReader
from .io.kinship_files import read_kinship
from .io.plink import BedReader, read_fam
from .io.results import ResumableTable, count_rows, format_rows, genomic_inflation, read_table
from .kinship import LocoKinships, filtered_relatedness
from .memory import check_memory
from .scan import default_chunk_size, prepare_scan, preload_kinship_scan, scan_chunks
from . import validate
from .validate import InputError


class Inputs(NamedTuple):
    """What the files give, on the genotype file's samples.

    genotypes: reader with ``shape`` (n_all, M) and ``[rows, a:b]``; bim: variant annotation
    analyzed: (n_all,) bool, samples in the analysis; y: (n,) phenotype of the analyzed samples
    covariates: (n, c0) or None (constant columns removed: the intercept is always fitted); covariate_names (c0,)
    groups: (n,) labels or None; tested: (M',) positions of the variants to test (``--snps``; None = all);
    kinship_variants: (M,) bool mask for the kinship (``--ksnps``; None = all); notes: lines for the log
    """

    genotypes: object
    bim: object
    analyzed: np.ndarray
    y: np.ndarray
    covariates: np.ndarray | None
    groups: np.ndarray | None
    covariate_names: tuple
    tested: np.ndarray | None
    kinship_variants: np.ndarray | None
    notes: tuple


def read_inputs(config: ScanConfig, samples_known: Callable | None = None) -> Inputs:
    """Open the genotypes and read and match the phenotype, covariates and groups (errors name file and line).

    samples_known(n, covariates): called once the analyzed samples (n) and the covariates (None, or columns on all
    samples) are known, before a PLINK fileset's ``.bed``/``.bim`` are opened (the ``.bim`` is the slowest read: 0.15 s at
    300,000 variants), e.g. to start loading programs meanwhile."""
    genotypes = None
    if config.bfile is not None:  # the samples from the .fam; the genotypes opened once the samples are known
        fam = read_fam(config.bfile + ".fam")
        fid, iid = fam.fid, fam.iid
        pheno_table = (tables.read_id_table(config.pheno) if config.pheno
                       else tables.read_fam_table(config.bfile + ".fam"))
        read_other = tables.read_id_table
    elif config.bgen is not None:
        genotypes = BgenReader(config.bgen, config.sample)
        if genotypes.sample_ids is None:
            raise InputError(f"{config.bgen}: no sample IDs in the file; give its .sample file (sample)")
        iid = np.asarray(genotypes.sample_ids).astype(str)
        fid = iid if genotypes.fids is None else np.asarray(genotypes.fids).astype(str)
        pheno_table = tables.read_id_table(config.pheno)
        read_other = tables.read_id_table
    else:
        genotypes = BimbamReader(config.geno, config.anno)
        n_all = genotypes.shape[0]
        fid = iid = np.array([str(i + 1) for i in range(n_all)])
        pheno_table = tables.read_bimbam_table(config.pheno)
        read_other = tables.read_bimbam_table
    n_all = fid.shape[0]
    pairs = list(zip(fid, iid))
    if len(set(pairs)) != n_all:
        duplicate = next(i for i, pair in enumerate(pairs) if pairs.index(pair) != i)
        source = f"{config.bfile}.fam" if config.bfile else config.sample or config.bgen
        raise InputError(f"{source}: line {duplicate + 1}: sample {fid[duplicate]} {iid[duplicate]} "
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
        categorical = [c.strip() for c in config.cat.split(",")] if config.cat else []
        for name in categorical:
            tables.column_index(covar_table, name)  # an unknown name is an error naming the file
        for j, name in enumerate(covar_table.names):
            if name in categorical:
                labels = tables.label_column(covar_table, j + 1)
                on_samples = np.array([labels[r] if r >= 0 else None for r in covar_rows], dtype=object)
                indicators, names, note = tables.indicator_columns(on_samples, name)
                columns += list(indicators.T)
                kept_names += names
                notes.append(note)
                continue
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
    for path, wanted in ((config.keep, True), (config.remove, False)):
        if path:
            listed = set(tables.read_id_list(path, 2))
            inside = np.array([pair in listed for pair in pairs])
            notes.append(f"{'keep' if wanted else 'remove'} {path}: {len(listed)} samples listed, "
                         f"{int(inside.sum())} in the genotype file")
            keep &= inside if wanted else ~inside
    if not keep.any():
        raise InputError("no sample has a phenotype value and complete covariates; nothing to analyze")
    if samples_known is not None:
        samples_known(int(keep.sum()), covariates)
    if genotypes is None:
        genotypes = BedReader(config.bfile, fam)
    tested, kinship_variants = None, None
    rsid = np.asarray(genotypes.bim.rsid)
    if config.snps:
        listed = set(tables.read_id_list(config.snps, 1))
        tested = np.flatnonzero(np.isin(rsid, list(listed)))
        if tested.size == 0:
            raise InputError(f"{config.snps}: none of its {len(listed)} variant IDs is in the genotype file")
        notes.append(f"snps {config.snps}: {len(listed)} listed, {tested.size} of {rsid.size} variants tested "
                     f"(the others are not tested and have no row)")
    if config.ksnps:
        listed = set(tables.read_id_list(config.ksnps, 1))
        kinship_variants = np.isin(rsid, list(listed))
        notes.append(f"ksnps {config.ksnps}: {len(listed)} listed, {int(kinship_variants.sum())} in the genotype "
                     "file available for the kinship")
    notes.append(f"samples analyzed: {int(keep.sum())} of {n_all}")
    return Inputs(genotypes, genotypes.bim, keep, y_all[keep],
                  None if covariates is None else covariates[keep], None if groups is None else groups[keep],
                  tuple(kept_names), tested, kinship_variants, tuple(notes))


def _on_samples(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Table values on the genotype file's samples; NaN where the table lacks a sample."""
    out = np.full(rows.shape[0], np.nan)
    out[rows >= 0] = values[rows[rows >= 0]]
    return out


class ScannedGenotypes:
    """Column-sliceable view of a genotype reader: the analyzed samples (rows, (n_all,) bool) and the tested
    variants (columns: (M',) sorted positions, or None for all); ``view[:, a:b]`` is (n, b - a): int8 counts with
    -1 for missing from readers that have them (PLINK, ``reader.counts``), else floats with NaN."""

    def __init__(self, reader, rows: np.ndarray, columns: np.ndarray | None = None):
        self.reader, self.rows, self.columns = reader, rows, columns
        self.shape = (int(rows.sum()), reader.shape[1] if columns is None else len(columns))
        # every sample analyzed: a slice, not a mask (N = 500 PLINK chunk: 0.21 against 0.39 ms, no copy)
        self._row_index = slice(None) if self.shape[0] == rows.shape[0] else rows

    def __getitem__(self, index):
        cols = index[1] if self.columns is None else self.columns[index[1]]
        return read_genotypes(self.reader, (self._row_index, cols))


def scanned_bim(inputs: Inputs):
    """The annotation of the tested variants."""
    return inputs.bim if inputs.tested is None else type(inputs.bim)(*(np.asarray(f)[inputs.tested]
                                                                       for f in inputs.bim))


def kinship_for(config: ScanConfig, inputs: Inputs) -> tuple[np.ndarray, str]:
    """(n_all, n_all) kinship in genotype sample order, and a line for the log."""
    n_all = inputs.genotypes.shape[0]
    if config.kinship:
        matrix = read_kinship(config.kinship)
        if matrix.shape[0] != n_all:
            raise InputError(f"{config.kinship}: {matrix.shape[0]} x {matrix.shape[0]} kinship, but the genotype "
                             f"file has {n_all} samples (a kinship covers all of them, in their order)")
        matrix = validate.kinship(matrix, n_all, name=config.kinship, atol=1e-6, check_psd=False, overwrite=True)
        return matrix, f"kinship: {config.kinship}"
    matrix, used = filtered_relatedness(inputs.genotypes, inputs.analyzed, config.min_maf, config.max_missing,
                                        standardize=config.gk == 2, variant_mask=inputs.kinship_variants)
    return matrix, f"kinship: computed (-gk {config.gk}) from {used} variants"


def fingerprint(config: ScanConfig) -> dict:
    """Inputs (paths, sizes, modification times) and result-changing settings, to refuse a mismatched resume."""
    files = {}
    for key in ("bfile", "bgen", "sample", "geno", "pheno", "anno", "covar", "kinship", "keep", "remove", "snps", "ksnps"):
        value = getattr(config, key)
        paths = [value + ext for ext in (".bed", ".bim", ".fam")] if key == "bfile" and value else [value]
        for path in filter(None, paths):
            if os.path.exists(path):
                stat = os.stat(path)
                files[os.path.abspath(path)] = [stat.st_size, int(stat.st_mtime)]
    settings = config._replace(resume=False, plots=False, max_memory=None, eigen=None, distributed=False,
                               coordinator=None, num_processes=None, process_id=None)._asdict()
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


class Run(NamedTuple):
    """Variants [start, stop) (positions among the scanned variants) fitted with one kinship: the whole-genome one
    (chromosome None) or, with LOCO, the one leaving out ``chromosome``."""

    chromosome: str | None
    start: int
    stop: int


def plan_runs(config: ScanConfig, bim, m: int) -> list:
    """One run over all variants, or (LOCO) one per stretch of consecutive variants on the same chromosome."""
    if not config.loco:
        return [Run(None, 0, m)]
    chrom = np.asarray(bim.chrom).astype(str)
    edges = np.r_[0, np.flatnonzero(chrom[1:] != chrom[:-1]) + 1, m]
    return [Run(chrom[a], int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def share(config: ScanConfig, runs: list, chunk_size: int, m: int) -> tuple[int, int]:
    """Variants [start, stop) of this process: all, or the i-th of n contiguous shares of the chunks (chunks start
    at each run's start), so every chunk holds the same variants as in a whole run."""
    if config.part is None:
        return 0, m
    i, n = part_share(config.part)
    starts = [first for run in runs for first in range(run.start, run.stop, chunk_size)]
    at = lambda k: starts[k] if k < len(starts) else m  # noqa: E731
    return at((i - 1) * len(starts) // n), at(i * len(starts) // n)


def _prepare(config, inputs, random, chromosome=None):
    import jax.numpy as jnp

    cache = None
    if config.eigen is not None and "kinship" in random:
        cache = config.eigen if chromosome is None else f"{config.eigen}.loco{chromosome}"

    try:
        return prepare_scan(inputs.y, inputs.covariates, mode=config.mode, chunk_size=config.chunk,
                            min_maf=config.min_maf, max_missing=config.max_missing, max_iter=config.max_iter,
                            rotation_dtype=jnp.dtype(config.rotation),
                            covariate_names=inputs.covariate_names or None, eigen_cache=cache,
                            min_hwe_p=config.hwe, **random)
    except InputError as err:  # name the files the model came from
        sources = [config.bfile or config.geno, config.pheno, config.covar, config.kinship]
        raise InputError(f"{', '.join(filter(None, sources))}: {err}") from None


def _preload_programs(config: ScanConfig, n: int, covariates, phenotypes: int, genotype_dtype) -> None:
    """Load the kept programs of this kinship scan (n samples; covariates None or (rows, c0), an intercept beside
    them) while the kinship is read and decomposed, guessing its rank: n - 1 for the centred kinship of n samples
    (see :func:`jaxlmm.scan.preload_kinship_scan`). Asking again for the same programs does nothing."""
    columns = 1 + (0 if covariates is None else covariates.shape[1])
    preload_kinship_scan(n, columns, phenotypes, n - 1, genotype_dtype, mode=config.mode, chunk_size=config.chunk,
                         max_iter=config.max_iter, rotation_dtype=config.rotation)


def _null_line(label, null) -> str:
    return (f"null model{label}: lambda {null.lambda_remle[0]:.6g}, vg {null.s2_g[0]:.6g}, ve {null.s2_e[0]:.6g}, "
            f"pve {null.pve[0]:.6g} (se {null.pve_se[0]:.6g}), REML logl {null.logl_remle[0]:.6g}, "
            f"ML logl {null.logl_mle[0]:.6g}")


def _random_effects(config, inputs, lines, first_chromosome=None):
    """chromosome (None for whole genome) -> keyword arguments of the random effect, built lazily per run.

    A kinship is handed over to be decomposed in place (``overwrite_kinship``): on the analyzed samples, the
    matrix read or computed here is not used again, so the scan makes no (n, n) copy of it (800 MB each at
    n = 10,000) and this function keeps no reference to it. first_chromosome: with LOCO, the chromosome of the
    first run, whose leave-one-out sum the first pass over the genotypes builds (:class:`LocoKinships`)."""
    square = np.ix_(inputs.analyzed, inputs.analyzed)
    on_analyzed = (lambda matrix: matrix) if inputs.analyzed.all() else (lambda matrix: matrix[square])  # noqa: E731
    if config.groups is not None:
        lines.append(f"random effect: (1|{config.groups}), {len(set(inputs.groups))} levels")
        return lambda chromosome: {"groups": inputs.groups}
    if not config.loco:
        kinship, note = kinship_for(config, inputs)
        lines.append(note)
        held = [kinship]
        del kinship
        # a kinship file was checked by kinship_for, with its own row numbers in messages
        return lambda chromosome: {"kinship": on_analyzed(held.pop()), "overwrite_kinship": True,
                                   "check_kinship": not config.kinship}
    loco = LocoKinships(inputs.genotypes, inputs.analyzed, inputs.bim.chrom, config.min_maf, config.max_missing,
                        standardize=config.gk == 2, variant_mask=inputs.kinship_variants, first=first_chromosome)
    lines.append(f"kinship: LOCO, -gk {config.gk} sums of {len(loco.used)} chromosomes from {loco.whole_used} "
                 f"variants, {loco.held} held at a time")

    def leave_out(chromosome):
        passes = loco.passes
        matrix, used = loco.leave_out(chromosome)
        again = " (another pass over the genotypes)" if loco.passes > passes else ""
        lines.append(f"chromosome {chromosome}: kinship from {used} variants on other chromosomes{again}")
        return {"kinship": on_analyzed(matrix), "overwrite_kinship": True}

    return leave_out


def run_scan(config: ScanConfig, on_chunk: Callable[[int, int], None] | None = None) -> list:
    """Run the scan a config describes; returns the log lines (also written to ``out.log.txt`` or the part's log).

    on_chunk(done, total): called as chunks are written (variants of this run done / to do).
    """
    began = time.perf_counter()
    early = None
    if config.groups is None and config.bfile is not None:  # loading starts before the .bim is read (int8 chunks)
        early = lambda n, covariates: _preload_programs(config, n, covariates, 1, np.int8)  # noqa: E731
    inputs = read_inputs(config, samples_known=early)
    if config.chunk is None:  # as prepare_scan and the preload above choose it
        config = config._replace(chunk=default_chunk_size(int(inputs.analyzed.sum())))
    lines = [f"jaxlmm scan: {_describe(config)}", *inputs.notes]
    rows = ScannedGenotypes(inputs.genotypes, inputs.analyzed, inputs.tested)
    bim = scanned_bim(inputs)
    m = rows.shape[1]
    runs = plan_runs(config, bim, m)
    start, stop = share(config, runs, config.chunk, m)
    check_memory(config, inputs, len(runs))
    path = output_path(config)
    make_parent_folder(path)
    table = ResumableTable(path, fingerprint(config), config.resume)
    if table.resumed_from:
        lines.append(f"resumed: {table.resumed_from} rows were already written")
    if config.groups is None and m > 0 and table.resumed_from < stop - start:  # other formats (PLINK: loading already)
        _preload_programs(config, inputs.y.shape[0], inputs.covariates, 1 if inputs.y.ndim == 1 else inputs.y.shape[1],
                          rows[:, :1].dtype)
    begin, current, reported = start + table.resumed_from, None, table.resumed_from
    first_chromosome = next((run.chromosome for run in runs if max(run.start, begin) < min(run.stop, stop)), None)
    random_for = _random_effects(config, inputs, lines, first_chromosome)  # LOCO: its sum is built first
    tally = _Tally()  # statuses and p-values of the rows written by this run
    for run in runs:
        first, last = max(run.start, begin), min(run.stop, stop)
        if first >= last:
            continue
        if current is None or current[0] != run.chromosome:
            current = (run.chromosome, _prepare(config, inputs, random_for(run.chromosome), run.chromosome))
            lines.append(_null_line("" if run.chromosome is None else f" (LOCO, chromosome {run.chromosome})",
                                    current[1].null))
        for chunk in scan_chunks(current[1], rows, first, last):
            b = chunk.columns["status"].shape[1]
            values = {k: v[0] for k, v in chunk.columns.items()}
            tally.add(values["status"], values["p_wald"])
            # formatted, written and committed by the table's writer thread while the next chunks are fitted
            table.append(partial(format_rows, values, bim, slice(chunk.offset, chunk.offset + b)), b)
            if on_chunk is not None and table.committed_rows > reported:
                reported = table.committed_rows
                on_chunk(reported, stop - start)
    written = table.finish()
    if on_chunk is not None and written > reported:
        on_chunk(written, stop - start)
    prefix = path[: -len(".assoc.tsv")]  # out, or out.part{i}of{n}
    results = None
    if config.plots or table.resumed_from:  # rows this run did not write, or plots: the table as written
        results = read_table(path, ("chr", "ps", "p_wald", "status") if config.plots else ("p_wald", "status"))
        tally = _Tally()
        tally.add(results["status"].to_numpy(), results["p_wald"].to_numpy())
    rows_out = count_rows(path)
    lines += [
        f"variants in: {stop - start}" + (f" (part {config.part} of {m})" if config.part else "")
        + f"; rows out: {rows_out}; " + ", ".join(f"{s}: {c}" for s, c in sorted(tally.statuses.items())),
        f"rows in == rows out: {stop - start == rows_out == written}",
        f"genomic inflation lambda_GC (p_wald): {genomic_inflation(np.concatenate(tally.ok_p_wald)):.4f}",
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
    if not stop - start == rows_out == written:
        raise InputError(f"rows in ({stop - start}) != rows out ({rows_out}) in {path}")
    return lines


class _Tally:
    """Status counts and the p_wald of "ok" rows, gathered chunk by chunk for the run's summary lines."""

    def __init__(self):
        self.statuses, self.ok_p_wald = collections.Counter(), [np.empty(0)]

    def add(self, status: np.ndarray, p_wald: np.ndarray) -> None:
        names, counts = np.unique(status, return_counts=True)
        self.statuses.update(dict(zip(names.tolist(), counts.tolist())))
        self.ok_p_wald.append(np.asarray(p_wald, dtype=float)[status == "ok"])


def _describe(config: ScanConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in config._asdict().items() if v is not None and v is not False)
