"""Tiny real model configs (CPU-fast) and tokenizers for each modality."""
import dataclasses

from data_pipeline.tokenizers import tokenizer_for

SIZES = dict(d_model=32, num_blocks=2, num_heads=2)


def tokenizer_dict(modality: str) -> dict:
    if modality == "molecules":
        from data_pipeline.tokenizers import SmilesTokenizer

        return SmilesTokenizer.from_corpus(["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@@H](N)C(=O)O"]).to_dict()
    return tokenizer_for(modality).to_dict()


def tiny_model_config(modality: str, **overrides) -> dict:
    """ModelConfig.to_dict() of a ~30k-parameter causal model for `modality`."""
    from data_pipeline.tokenizers import load_tokenizer
    from modeling import ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    wanted = dict(SIZES, vocab_size=load_tokenizer(tokenizer_dict(modality)).vocab_size, **overrides)
    return ModelConfig(**{k: v for k, v in wanted.items() if k in known}).to_dict()
