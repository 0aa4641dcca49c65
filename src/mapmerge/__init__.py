"""mapmerge: model merging with amortized Pareto fronts (MAP) as a Snakemake workflow."""

__version__ = "0.1.0"
