"""Small real data bundled with the project, and quick shard builds from it for the demo.

Files and provenance: see README.md in this folder. `build_demo_shards` builds in seconds on
a CPU: DNA = lambda phage + the first 400 kb of C. diphtheriae NCTC11397 (4 kb windows,
split by window); protein = the first 2,000 clusters with >= 2 members of the MMseqs2 50%
clustering of 20k UniProt entries; molecules = the first 10,000 MOSES SMILES grouped by
Bemis-Murcko scaffold (domains >= 5 molecules). Default validation share: 10% of groups.
"""
from __future__ import annotations

import gzip
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
LAMBDA = DEMO_DIR / "lambda_virus.fa.gz"
GENOME = DEMO_DIR / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
PROTEINS = DEMO_DIR / "uniprot_20k.fasta.gz"
CLUSTERS = DEMO_DIR / "uniprot_20k.clusters50.tsv.gz"
MOLECULES = DEMO_DIR / "moses_train_200k.smi.gz"
GENOME_SLICE_BASES = 400_000


def _genome_slice(out: Path) -> Path:
    """First GENOME_SLICE_BASES bases of the genome record, as a small FASTA in the build dir."""
    lines, bases = [], 0
    with gzip.open(GENOME, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                if lines:
                    break
                lines.append(line)
                continue
            lines.append(line)
            bases += len(line.strip())
            if bases >= GENOME_SLICE_BASES:
                break
    path = out / "source_genome_slice.fa"
    path.write_text("".join(lines))
    return path


def build_demo_shards(out_dir: str | Path, modality: str, progress: bool = False,
                      val_fraction: float = 0.1, seed: int = 0) -> Path:
    """Build the demo shards of one modality into `out_dir` (must not hold a build); returns it."""
    out = Path(out_dir)
    if modality == "dna":
        from data_pipeline.build_dna import build_dna

        if (out / "manifest.json").exists():
            from data_pipeline.errors import OutputExistsError

            raise OutputExistsError(f"{out}/manifest.json exists: choose another demo directory")
        out.mkdir(parents=True, exist_ok=True)  # the slice FASTA is kept beside the shards
        build_dna([str(LAMBDA), str(_genome_slice(out))], str(out), window_len=4096,
                  val_fraction=val_fraction, seed=seed, shard_mb=0.25, progress=progress)
    elif modality == "protein":
        from data_pipeline.build_protein import build_protein

        build_protein([str(PROTEINS)], str(out), clusters=str(CLUSTERS), min_members=2,
                      max_clusters=2000, val_fraction=val_fraction, seed=seed, shard_mb=1.0,
                      progress=progress)
    elif modality == "molecules":
        from data_pipeline.build_molecules import build_molecules

        build_molecules([str(MOLECULES)], str(out), min_domain_size=5, max_molecules=10_000,
                        val_fraction=val_fraction, seed=seed, shard_mb=0.5, progress=progress)
    else:
        from data_pipeline.errors import ConfigError

        raise ConfigError(f"modality={modality!r}: choose dna, protein or molecules")
    return out
