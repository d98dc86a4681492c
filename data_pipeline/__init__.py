"""Shards, tokenizers, streaming loaders and modality formatters."""
