"""Shards, tokenizers, streaming loaders and modality formatters.

Raw files -> `bioxlstm data build` (readers, build_dna / build_protein / build_molecules,
build_output, shards, manifest) -> WebDataset tar shards with zstd members + manifest.json
-> `loader.build_loader` (per-rank/worker split, exact resume) -> `formatters` (DNA windows,
RC, MLM; protein homology ICL with FIM; molecule domains) -> packed (B, S) LongTensors.
`tokenizers` is standard-library only so exported models can load it alone.
"""
