"""Regenerate the embedded demo dataset (run from the repository root: ``python3 jaxlmm/data/make_demo.py``).

A simulated study with a known truth, small enough to scan in seconds:

* 600 individuals in 150 nuclear families (2 unrelated parents-to-be drawn from 3 subpopulations, 2 children each
  with Mendelian inheritance of the parents' haplotypes) — related individuals and population structure, so the
  kinship matters;
* 3,000 biallelic variants on 3 chromosomes (1,000 each), allele frequencies drawn per subpopulation around a
  shared one (Balding-Nichols, F_ST = 0.05), a few percent of calls set missing, some rare and monomorphic variants;
* phenotype = 5 causal variants (truth in ``demo_truth.json``) + a polygenic effect spread over all variants
  (heritability 0.4) + sex and age effects + noise; 10 phenotypes set missing;
* files: ``demo.bed/.bim/.fam`` (phenotype in the .fam's column 6) and ``demo_covariates.txt`` (FID IID sex age).

Deterministic (numpy seed 20261124): rerunning writes identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SEED = 20261124
FAMILIES, CHILDREN, POPULATIONS = 150, 2, 3
VARIANTS_PER_CHROMOSOME, CHROMOSOMES = 1000, 3
CAUSAL = {"chrom_index": [120, 1450, 1460, 2222, 2900], "effect": [0.55, -0.45, 0.40, 0.50, -0.60]}
HERITABILITY_POLYGENIC = 0.4
FST = 0.05


def _haplotypes(rng, frequencies, count):
    """(count, m) 0/1 haplotypes with the given allele frequencies."""
    return (rng.random((count, frequencies.shape[0])) < frequencies).astype(np.int8)


def simulate(rng):
    m = VARIANTS_PER_CHROMOSOME * CHROMOSOMES
    shared = rng.uniform(0.02, 0.5, m)
    shared[rng.choice(m, 60, replace=False)] = rng.uniform(0.001, 0.006, 60)  # rare variants
    shared[rng.choice(m, 20, replace=False)] = 0.0  # monomorphic
    a = shared * (1 - FST) / FST
    b = (1 - shared) * (1 - FST) / FST
    population_freq = np.where(shared > 0, rng.beta(np.maximum(a, 1e-9), np.maximum(b, 1e-9),
                                                      (POPULATIONS, m)), 0.0)
    genotypes, fid, iid = [], [], []
    for family in range(FAMILIES):
        population = family % POPULATIONS
        parents = [_haplotypes(rng, population_freq[population], 2) for _ in range(2)]
        for child in range(CHILDREN):
            # one recombination point per chromosome per transmitted haplotype
            transmitted = []
            for haplotypes in parents:
                pieces = []
                for c in range(CHROMOSOMES):
                    block = slice(c * VARIANTS_PER_CHROMOSOME, (c + 1) * VARIANTS_PER_CHROMOSOME)
                    cut = rng.integers(0, VARIANTS_PER_CHROMOSOME)
                    first = rng.integers(0, 2)
                    piece = np.concatenate([haplotypes[first, block][:cut], haplotypes[1 - first, block][cut:]])
                    pieces.append(piece)
                transmitted.append(np.concatenate(pieces))
            genotypes.append(transmitted[0] + transmitted[1])
            fid.append(f"F{family + 1:03d}")
            iid.append(f"F{family + 1:03d}_{child + 1}")
        for parent, haplotypes in enumerate(parents):
            genotypes.append(haplotypes.sum(axis=0))
            fid.append(f"F{family + 1:03d}")
            iid.append(f"F{family + 1:03d}_P{parent + 1}")
    return np.array(genotypes, dtype=float), np.array(fid), np.array(iid)


def phenotype(rng, genotypes, sex, age):
    n, m = genotypes.shape
    mean = genotypes.mean(axis=0)
    sd = genotypes.std(axis=0)
    standardized = np.where(sd > 0, (genotypes - mean) / np.where(sd > 0, sd, 1), 0.0)
    polygenic = standardized @ rng.normal(0, 1, m)
    polygenic *= np.sqrt(HERITABILITY_POLYGENIC / polygenic.var())
    causal = standardized[:, CAUSAL["chrom_index"]] @ np.array(CAUSAL["effect"])
    noise = rng.normal(0, np.sqrt(1 - HERITABILITY_POLYGENIC), n)
    return causal + polygenic + 0.3 * sex + 0.02 * (age - 45) + noise


def write_bed(path, genotypes):
    """SNP-major PLINK .bed counting allele A1: 2 -> 00, 1 -> 10, 0 -> 11, missing -> 01."""
    n, m = genotypes.shape
    codes = np.where(np.isnan(genotypes), 1, np.select([genotypes == 2, genotypes == 1], [0, 2], 3)).astype(np.uint8)
    padded = np.zeros((m, -(-n // 4) * 4), dtype=np.uint8)
    padded[:, :n] = codes.T
    packed = (padded.reshape(m, -1, 4) << np.array([0, 2, 4, 6], dtype=np.uint8)).sum(axis=2).astype(np.uint8)
    with open(path, "wb") as handle:
        handle.write(bytes([0x6C, 0x1B, 0x01]))
        handle.write(packed.tobytes())


def main():
    rng = np.random.default_rng(SEED)
    genotypes, fid, iid = simulate(rng)
    n, m = genotypes.shape
    sex = rng.integers(0, 2, n).astype(float)
    age = rng.uniform(20, 70, n).round(1)
    y = phenotype(rng, genotypes, sex, age)
    y[rng.choice(n, 10, replace=False)] = np.nan
    calls = genotypes.copy()
    calls[rng.random(calls.shape) < 0.01] = np.nan
    gappy = rng.choice(m, 15, replace=False)  # variants with 20% missing calls (fail max_missing 0.05)
    calls[:, gappy] = np.where(rng.random((n, 15)) < 0.2, np.nan, calls[:, gappy])
    write_bed(HERE / "demo.bed", calls)
    chrom = np.repeat(np.arange(1, CHROMOSOMES + 1), VARIANTS_PER_CHROMOSOME)
    position = np.tile(np.arange(1, VARIANTS_PER_CHROMOSOME + 1) * 10_000, CHROMOSOMES)
    names = [f"snp{j + 1}" for j in range(m)]
    (HERE / "demo.bim").write_text("".join(f"{c}\t{name}\t0\t{p}\tA\tG\n" for c, name, p in zip(chrom, names, position)))
    (HERE / "demo.fam").write_text("".join(
        f"{f}\t{i}\t0\t0\t{int(s) + 1}\t{'NA' if np.isnan(v) else f'{v:.6f}'}\n"
        for f, i, s, v in zip(fid, iid, sex, y)))
    (HERE / "demo_covariates.txt").write_text("FID\tIID\tsex\tage\n" + "".join(
        f"{f}\t{i}\t{int(s)}\t{a}\n" for f, i, s, a in zip(fid, iid, sex, age)))
    truth = {
        "seed": SEED, "samples": int(n), "variants": int(m),
        "causal_variants": [names[j] for j in CAUSAL["chrom_index"]],
        "causal_effects_per_sd": CAUSAL["effect"],
        "polygenic_heritability": HERITABILITY_POLYGENIC,
        "covariate_effects": {"sex": 0.3, "age_per_year": 0.02},
        "missing_phenotypes": 10,
    }
    (HERE / "demo_truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(json.dumps(truth))


if __name__ == "__main__":
    main()
