"""Tiny real model configs (CPU-fast) and tokenizers for each modality."""
from data_pipeline.tokenizers import tokenizer_for

SIZES = dict(d_model=32, num_blocks=2, num_heads=2, chunk_size=16)
# protein: Prot-xLSTM's RoPE over the inner dim with data-given positions; DNA: RoPE per head and
# an sLSTM block, so step mode carries both kinds of state; molecules: no position encoding
VARIANTS = {
    "protein": dict(position_encoding="rope_inner", rope_theta=500000.0, max_position_id=2047),
    "dna": dict(position_encoding="rope_head", slstm_positions=[1], slstm_num_heads=2),
    "molecules": dict(position_encoding="none"),
}


def tokenizer_dict(modality: str) -> dict:
    if modality == "molecules":
        from data_pipeline.tokenizers import SmilesTokenizer

        return SmilesTokenizer.from_corpus(["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@@H](N)C(=O)O"]).to_dict()
    return tokenizer_for(modality).to_dict()


def tiny_model_config(modality: str, **overrides) -> dict:
    """ModelConfig.to_dict() of a tiny (~30k-parameter) causal model for `modality`."""
    from data_pipeline.tokenizers import load_tokenizer
    from modeling import ModelConfig

    wanted = dict(SIZES, vocab_size=load_tokenizer(tokenizer_dict(modality)).vocab_size, **VARIANTS[modality])
    wanted.update(overrides)
    return ModelConfig.from_dict(wanted).to_dict()
