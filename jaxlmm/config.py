"""Run settings for ``jaxlmm scan`` and ``jaxlmm grm``: one typed record, filled from defaults, then a TOML file,
then command-line flags (each later source overrides the earlier).

A TOML file holds the keys of :data:`SCAN_KEYS` at its top level (``configs/`` has documented examples). Paths in a
TOML file are relative to the file's own folder; paths given as flags are relative to the working directory. An
unknown key or a value of the wrong type is an error naming the key.
"""

from __future__ import annotations

import os
import tomllib
import typing
from typing import NamedTuple

from .validate import InputError


class ScanConfig(NamedTuple):
    """Inputs: ``bfile`` (PLINK prefix), ``bgen`` (BGEN v1.2 dosages, with its ``sample`` file unless the BGEN
    holds sample IDs; phenotypes then come from a FID/IID ``pheno`` table, FID = ID_1, IID = ID_2 of the .sample,
    or FID = IID = the sample ID) or ``geno`` + ``pheno`` (+ ``anno``) for BIMBAM; ``pheno`` with ``bfile`` is a
    FID/IID table replacing the .fam's phenotypes. ``hwe``: variants whose Hardy-Weinberg exact p-value (on the
    analyzed samples' rounded genotypes) is below it get status "hwe" (0: no filter). ``pheno_col``: 1-based number (GEMMA ``-n``) or name.
    ``covar``: covariate table (FID/IID, or BIMBAM rows); constant columns stand for the intercept, which is always
    fitted. ``kinship``: GEMMA text or .npy (n x n in genotype-file sample order); computed with ``gk`` (1 centred,
    2 standardized) when absent. ``groups``: a column of the covariate or phenotype table, fitted as ``(1|group)``
    instead of a kinship. Outputs go to ``out`` + ``.assoc.tsv`` / ``.log.txt`` / ``.manhattan.png`` /
    ``.qq.png``. ``loco``: each chromosome scanned with the kinship of all other chromosomes. ``keep`` /
    ``remove``: files of samples (FID IID per line) to keep / leave out. ``snps``: file of variant IDs to test
    (first field per line; the others are not tested, and the log says how many); ``ksnps``: variant IDs for the
    kinship. ``cat``: comma-separated covariate columns that are categorical (indicator columns, first level in
    sorted order the reference). ``max_memory``: GiB the run may use; a run estimated to need more stops before
    allocating, suggesting a chunk size. ``eigen``: file prefix of a cached eigendecomposition of the kinship
    (written when absent, reused when its key matches, refused when stale; LOCO adds ``.loco<chromosome>``).
    ``distributed``: a multi-process run on JAX's runtime (``jax.distributed``): each process scans its share of the
    chunks, process 0 merges the shares; ``coordinator`` (host:port), ``num_processes``, ``process_id`` are passed
    to ``jax.distributed.initialize`` (None: detected from the cluster environment, e.g. SLURM)."""

    bfile: str | None = None
    bgen: str | None = None
    sample: str | None = None
    geno: str | None = None
    pheno: str | None = None
    anno: str | None = None
    pheno_col: int | str = 1
    covar: str | None = None
    kinship: str | None = None
    groups: str | None = None
    gk: int = 1
    mode: str = "exact"
    out: str | None = None
    chunk: int | None = None  # None: from the analyzed samples (jaxlmm.scan.default_chunk_size)
    min_maf: float = 0.01
    max_missing: float = 0.05
    max_iter: int = 30
    rotation: str = "float64"
    plots: bool = False
    resume: bool = False
    part: str | None = None
    loco: bool = False
    keep: str | None = None
    remove: str | None = None
    snps: str | None = None
    ksnps: str | None = None
    cat: str | None = None
    max_memory: float | None = None
    eigen: str | None = None
    hwe: float = 0.0
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


SCAN_KEYS = ScanConfig._fields
PATH_KEYS = ("bfile", "bgen", "sample", "geno", "pheno", "anno", "covar", "kinship", "out", "keep", "remove", "snps", "ksnps",
             "eigen")


def _accepted_types(annotation) -> tuple:
    """The TOML value types a field's annotation accepts: its types without None, integers too where a float is."""
    types = tuple(t for t in typing.get_args(annotation) or (annotation,) if t is not type(None))
    return types + (int,) if float in types and int not in types else types


_TYPES = {key: _accepted_types(annotation) for key, annotation in typing.get_type_hints(ScanConfig).items()}
_CHOICES = {"mode": ("exact", "null"), "rotation": ("float64", "float32"), "gk": (1, 2)}


def load_toml(path) -> dict:
    """Settings from a TOML file, type-checked, with paths made relative to the working directory."""
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except OSError as err:
        raise InputError(f"cannot read config {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML: {err}") from None
    base = os.path.dirname(os.path.abspath(path))
    settings = {}
    for key, value in raw.items():
        if key not in _TYPES:
            raise InputError(f"{path}: unknown key {key!r} (known keys: {', '.join(SCAN_KEYS)})")
        settings[key] = _checked(key, value, f"{path}: key {key!r}")
        if key in PATH_KEYS:
            settings[key] = os.path.normpath(os.path.join(base, settings[key]))
    return settings


def _checked(key, value, where):
    types = _TYPES[key]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = " or ".join({int: "integer", float: "number", str: "string", bool: "true/false"}[t] for t in types)
        raise InputError(f"{where} must be a {names}, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise InputError(f"{where} must be one of {', '.join(map(str, _CHOICES[key]))}, got {value!r}")
    return float(value) if float in types and not isinstance(value, str) else value


def scan_config(toml_path=None, **flags) -> ScanConfig:
    """Defaults, overridden by the TOML file, overridden by flags that are not None; then checked as a whole."""
    settings = load_toml(toml_path) if toml_path else {}
    for key, value in flags.items():
        if value is not None:
            settings[key] = _checked(key, value, f"--{key.replace('_', '-')}")
    config = ScanConfig(**settings)
    if isinstance(config.pheno_col, str) and config.pheno_col.isdigit():
        config = config._replace(pheno_col=int(config.pheno_col))
    return _consistent(config)


def _consistent(config: ScanConfig) -> ScanConfig:
    if sum(x is not None for x in (config.bfile, config.bgen, config.geno)) != 1:
        raise InputError("give the genotypes as one of bfile (PLINK prefix), bgen (BGEN file) or geno (BIMBAM file)")
    if config.bgen is not None and config.pheno is None:
        raise InputError("a BGEN file needs a phenotype table (pheno: FID IID ... matched to the sample IDs)")
    if not 0 <= config.hwe < 1:
        raise InputError(f"hwe must be a p-value threshold in [0, 1), got {config.hwe}")
    if config.geno is not None and config.pheno is None:
        raise InputError("a BIMBAM geno file needs its pheno file (one row per sample, in genotype order)")
    if config.loco and (config.kinship is not None or config.groups is not None):
        raise InputError("loco builds its kinships from the genotypes: give neither a kinship file nor groups")
    if config.max_memory is not None and config.max_memory <= 0:
        raise InputError(f"max_memory must be a positive number of GiB, got {config.max_memory}")
    if config.kinship is not None and config.groups is not None:
        raise InputError("give either a kinship or a groups column for the random effect, not both")
    if config.out is None:
        raise InputError("no output prefix: give --out PREFIX (or out = \"...\" in the config)")
    if config.chunk is not None and config.chunk < 1:
        raise InputError(f"chunk must be a positive number of variants, got {config.chunk}")
    if not 0 <= config.min_maf < 0.5:
        raise InputError(f"min_maf must be in [0, 0.5), got {config.min_maf}")
    if not 0 <= config.max_missing <= 1:
        raise InputError(f"max_missing must be in [0, 1], got {config.max_missing}")
    if config.max_iter < 1:
        raise InputError(f"max_iter must be at least 1, got {config.max_iter}")
    if config.part is not None:
        part_share(config.part)
        if config.distributed:
            raise InputError("part and distributed both split the scan: give one of them")
    return config


def part_share(part: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n."""
    try:
        i, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise InputError(f"part must look like i/n (e.g. 3/10), got {part!r}") from None
    if not 1 <= i <= n:
        raise InputError(f"part {part!r}: need 1 <= i <= n")
    return i, n
