"""Tiny real models for evaluation tests: a random-weight BioXLSTM per modality (float64 where
a test recomputes figures independently), built without any training."""
from __future__ import annotations

import torch

from data_pipeline.tokenizers import SmilesTokenizer, load_tokenizer, tokenizer_for
from modeling import ModelConfig, build_model
from modeling.inference import BioXLSTM

SIZES = dict(d_model=32, num_blocks=2, num_heads=2, chunk_size=16)
VARIANTS = {
    "protein": dict(position_encoding="rope_inner", rope_theta=500000.0, max_position_id=2047),
    "dna": dict(position_encoding="rope_head"),
    "molecules": dict(position_encoding="none"),
}
SMILES_CORPUS = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "C[C@@H](N)C(=O)O", "CCN(CC)CC", "O=C(O)c1ccccc1"]


def tokenizer(modality: str, corpus=SMILES_CORPUS):
    if modality == "molecules":
        return SmilesTokenizer.from_corpus(corpus)
    return tokenizer_for(modality)


def tiny_bioxlstm(modality: str, seed: int = 0, dtype=torch.float64, tok=None, **overrides) -> BioXLSTM:
    """A random-weight model wrapped as the inference API wraps an export."""
    tok = tok or tokenizer(modality)
    wanted = dict(SIZES, vocab_size=tok.vocab_size, **VARIANTS[modality])
    wanted.update(overrides)
    config = ModelConfig.from_dict(wanted)
    torch.manual_seed(seed)
    model = build_model(config).to(dtype).eval()
    with torch.no_grad():          # non-trivial gates and outputs: random weights everywhere
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return BioXLSTM(model, config, load_tokenizer(tok.to_dict()))
