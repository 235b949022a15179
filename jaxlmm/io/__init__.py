"""Readers and writers for genotype, phenotype and kinship files."""
