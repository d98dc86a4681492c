"""Command-line entry, SLURM (submitit) and local multi-process launch."""
