"""DataConfig: what the loader needs to turn a build directory into training batches.

Plain fields only (int/float/str/bool/optional), so the pretrain run config can embed it and
read it from YAML. The context length is not here: it belongs to the curriculum stage and is
passed to `build_loader`, so shards never need rebuilding when it changes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from data_pipeline.errors import ConfigError

MODALITIES = ("dna", "protein", "molecules")
OBJECTIVES = ("clm", "mlm")


@dataclass
class DataConfig:
    modality: str = "dna"            # "dna" | "protein" | "molecules"; must match the manifest
    shards: str = ""                 # build output directory (holds manifest.json)
    objective: str = "clm"           # "clm" next-token; "mlm" BERT-style masking (DNA only)
    rc_augment: bool = True          # DNA train windows reverse-complemented with p = 0.5
    mlm_probability: float = 0.15    # fraction of bases selected; 80% [MASK], 10% random, 10% kept
    fim: bool = True                 # protein fill-in-the-middle (DESIGN.md section 8 "FIM")
    fim_max_spans: int = 5           # spans ~ Poisson(fim_mean_spans) resampled until <= this
    fim_mean_spans: float = 1.0
    fim_span_fraction: float = 0.2   # span length uniform in [1, max(floor(frac * L), 2))
    max_position_id: int = 2047      # protein position ids clamped here
    shuffle_members: bool = True     # shuffle cluster members / domain molecules per sample
    packing: Optional[bool] = None   # fill each row with whole documents (state reset at each);
                                     # None = on for protein and molecules, and for DNA where a
                                     # stored window is shorter than the context (else padding)
    num_workers: int = 2             # logical sub-streams per data-parallel rank
    seed: int = 0                    # data order seed (added to the seed given to build_loader)
    on_corrupt: str = "error"        # "error" stops with the shard and member; "skip" counts it
    verify_checksums: bool = True    # sha256 of each shard checked against the manifest on first
                                     # open (reads it whole once; zstd frame checksums are always
                                     # checked per member, so very large builds may turn this off)

    def validate(self) -> "DataConfig":
        def bad(field: str, hint: str):
            raise ConfigError(f"data.{field}={getattr(self, field)!r}: {hint}")

        if self.modality not in MODALITIES:
            bad("modality", f"choose one of {', '.join(MODALITIES)}")
        if self.objective not in OBJECTIVES:
            bad("objective", f"choose one of {', '.join(OBJECTIVES)}")
        if self.objective == "mlm" and self.modality != "dna":
            bad("objective", "mlm is implemented for dna only; use clm")
        if not self.shards:
            bad("shards", "set it to a `bioxlstm data build` output directory")
        if not 0.0 < self.mlm_probability < 1.0:
            bad("mlm_probability", "must be in (0, 1)")
        if not 0 <= self.fim_max_spans <= 5:
            bad("fim_max_spans", "must be in 0..5 (the vocabulary has <mask-1>..<mask-5>)")
        if self.fim_mean_spans < 0:
            bad("fim_mean_spans", "must be >= 0")
        if not 0.0 < self.fim_span_fraction <= 1.0:
            bad("fim_span_fraction", "must be in (0, 1]")
        if self.num_workers < 1:
            bad("num_workers", "must be >= 1")
        if self.on_corrupt not in ("error", "skip"):
            bad("on_corrupt", "choose 'error' or 'skip'")
        if self.packing is not None and not isinstance(self.packing, bool):
            bad("packing", "must be true, false or null (null = per modality, see DataConfig)")
        if self.max_position_id < 1:
            bad("max_position_id", "must be >= 1")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "DataConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown data config keys {unknown}; known: {sorted(known)}")
        return cls(**values)
