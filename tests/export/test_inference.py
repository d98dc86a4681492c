"""Inference on a real (randomly initialised) tiny model wrapped as an export would load it.

- Step-mode generation gives, at every step, the logits of a full forward over the sequence so
  far (fp32, relative 1e-5), and its recurrent state has the same byte size after 5 and after
  200 generated tokens.
- Protein prompts (homolog context, FIM infill) feed exactly the tokens and position ids the
  training formatter (data_pipeline.formatters) produces for the same sequences.
- score() equals the log-softmax of a full forward gathered at the next tokens, computed here
  in float64; embed() returns the final hidden states.
- RDKit validity / uniqueness / novelty on known molecules.
"""
import math

import pytest
import torch

from data_pipeline.formatters import protein_fim_sequence
from data_pipeline.tokenizers import load_tokenizer
from modeling.inference import BioXLSTM, InferenceError, molecule_metrics
from tiny_models import tiny_model_config, tokenizer_dict

RTOL = 1e-5


def _wrapped(modality: str, seed: int = 0) -> BioXLSTM:
    from modeling import ModelConfig, build_model

    torch.manual_seed(seed)
    config = ModelConfig.from_dict(tiny_model_config(modality))
    model = build_model(config).eval()
    return BioXLSTM(model, config, load_tokenizer(tokenizer_dict(modality)))


class FeedRecorder:
    """Wraps the real model's step to record every (token, position) it is fed."""

    def __init__(self, model):
        self.model, self.fed = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def step(self, token_ids, state, position_ids=None):
        self.fed.append((int(token_ids[0]), int(position_ids[0])))
        return self.model.step(token_ids, state, position_ids=position_ids)


def _relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("modality,prompt", [("protein", "MKTAYIAKQR"), ("dna", "ACGTTGCA"), ("molecules", "CC(=O)")])
def test_step_generation_matches_full_forward_at_every_step(modality, prompt):
    wrapped = _wrapped(modality)
    recorder = FeedRecorder(wrapped.model)
    wrapped.model = recorder
    generation = wrapped.generate(prompt, max_new_tokens=12, temperature=1.0, seed=3, keep_logits=True)
    fed_tokens = [t for t, _ in recorder.fed]
    fed_positions = [p for _, p in recorder.fed]
    prompt_len = len(wrapped._start_ids()) + len(wrapped.tokenizer.encode(prompt))
    assert len(generation.step_logits) >= 1
    for k, step_logits in enumerate(generation.step_logits):
        end = prompt_len + k
        with torch.no_grad():
            full = recorder.model(torch.tensor([fed_tokens[:end]]), position_ids=torch.tensor([fed_positions[:end]]))
        assert _relative_error(step_logits, full[0, -1]) <= RTOL, f"step {k}"


def test_state_size_does_not_grow_with_generated_length():
    wrapped = _wrapped("dna")
    short = wrapped.generate("ACGT", max_new_tokens=5, seed=0)
    long = wrapped.generate("ACGT", max_new_tokens=200, seed=0)
    assert len(long.token_ids) == 4 + 200
    assert set(short.state_bytes) == set(long.state_bytes) and len(set(long.state_bytes)) == 1
    assert long.state_bytes[0] > 0


def test_same_seed_same_generation_and_greedy_is_deterministic():
    wrapped = _wrapped("protein")
    a = wrapped.generate("MKT", 20, seed=7).text
    assert a == wrapped.generate("MKT", 20, seed=7).text
    assert wrapped.generate("MKT", 20, temperature=0).text == wrapped.generate("MKT", 20, temperature=0).text


def test_homolog_prompt_uses_the_training_layout():
    wrapped = _wrapped("protein")
    tok = wrapped.tokenizer
    recorder = FeedRecorder(wrapped.model)
    wrapped.model = recorder
    homologs = ["MKTAYIAK", "MKSAYLAKQ"]
    (new,) = wrapped.generate_protein(homologs, num_sequences=1, max_new_tokens=15, seed=1)
    expected_tokens, expected_positions = [], []
    for sequence in homologs + [new]:
        tokens, positions = protein_fim_sequence(tok.encode(sequence), [], tok.cls_id, tok.eos_id, [], 2047)
        expected_tokens += tokens
        expected_positions += positions
    fed = recorder.fed[: len(expected_tokens)]
    assert [t for t, _ in fed] == expected_tokens
    assert [p for _, p in fed] == expected_positions
    assert set(new) <= set("LAGVSERTIDPKQNFYMHWCXBUZO.-")


def test_infill_feeds_the_fim_layout_of_the_filled_sequence():
    wrapped = _wrapped("protein")
    tok = wrapped.tokenizer
    recorder = FeedRecorder(wrapped.model)
    wrapped.model = recorder
    homolog = "MKTAYIAKQRQISFVKSHF"
    masked = "MKTA??AKQRQ???FVKSHF"
    result = wrapped.infill([homolog], masked, max_span_tokens=6, seed=5)
    assert len(result.spans) == 2
    # rebuild what training would show for the filled sequence with spans at the '?' runs,
    # but with the ORIGINAL span lengths fixing positions of what follows each span
    masked_ids = tok.encode(masked.replace("?", "X"))
    spans = [(4, 6), (11, 14)]
    query, query_positions = protein_fim_sequence(masked_ids, spans, tok.cls_id, tok.eos_id,
                                                  [tok.fim_mask_id(k) for k in range(1, 6)], 2047)
    cut = query.index(tok.eos_id) + 1
    context, context_positions = protein_fim_sequence(tok.encode(homolog), [], tok.cls_id, tok.eos_id, [], 2047)
    expected = list(zip(context + query[:cut], context_positions + query_positions[:cut]))
    for number, ((start, _), span) in enumerate(zip(spans, result.spans), start=1):
        expected.append((tok.fim_mask_id(number), start + 1))
        expected += [(t, start + 1 + k) for k, t in enumerate(tok.encode(span))]
    assert recorder.fed[: len(expected)] == expected
    assert result.sequence == "MKTA" + result.spans[0] + "AKQRQ" + result.spans[1] + "FVKSHF"


def test_infill_rejects_a_sequence_without_spans_or_with_too_many():
    wrapped = _wrapped("protein")
    with pytest.raises(InferenceError, match="no span"):
        wrapped.infill([], "MKTAYIAK")
    with pytest.raises(InferenceError, match="at most 5"):
        wrapped.infill([], "M?K?T?A?Y?I?A")


@pytest.mark.parametrize("modality,sequences", [
    ("protein", ["MKTAYIAKQR", "MKTAY", "LLAGVSERTIDPKQ", "MKTAY"]),
    ("molecules", ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"]),
    ("dna", ["ACGTACGTTT", "GGGCCA"]),
])
def test_score_is_the_float64_log_likelihood_of_the_next_tokens(modality, sequences):
    wrapped = _wrapped(modality)
    scores = wrapped.score(sequences, batch_size=2)
    for sequence, score in zip(sequences, scores):
        ids = wrapped._start_ids() + wrapped.tokenizer.encode(sequence)
        positions = wrapped._positions(ids)
        with torch.no_grad():
            logits = wrapped.model(torch.tensor([ids]), position_ids=torch.tensor([positions]))[0].double()
        expected = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
        assert score.num_tokens == len(ids) - 1
        assert math.isclose(score.log_likelihood, expected, rel_tol=RTOL)
        assert math.isclose(score.perplexity, math.exp(-expected / (len(ids) - 1)), rel_tol=1e-4)


def test_embed_returns_final_hidden_states_per_token_and_their_mean():
    wrapped = _wrapped("protein")
    (embedding,) = wrapped.embed(["MKTAYIAKQR"])
    ids = [wrapped.tokenizer.cls_id] + wrapped.tokenizer.encode("MKTAYIAKQR")
    with torch.no_grad():
        hidden = wrapped.model(torch.tensor([ids]), position_ids=torch.tensor([wrapped._positions(ids)]),
                               return_hidden=True)[0, 1:]
    assert embedding.per_token.shape == (10, hidden.shape[-1])
    assert _relative_error(embedding.per_token, hidden) <= RTOL
    assert _relative_error(embedding.pooled, hidden.mean(0)) <= RTOL


def test_embed_packs_sequences_exactly_also_for_bidirectional_models():
    """embed() runs several sequences in one packed row (state resets between them): each one's
    vectors equal its own forward, for a weight-tied bidirectional DNA model with an sLSTM block."""
    from modeling import ModelConfig, build_model

    torch.manual_seed(2)
    config = ModelConfig.from_dict(tiny_model_config("dna", bidirectional="weight_tied", head="mlm"))
    wrapped = BioXLSTM(build_model(config).eval(), config, load_tokenizer(tokenizer_dict("dna")))
    sequences = ["ACGTACGTTTGA", "GGGCCA", "T", "ACGTTGCAACGTAGGA"]
    embeddings = wrapped.embed(sequences, batch_size=2)
    for sequence, embedding in zip(sequences, embeddings):
        ids = wrapped.tokenizer.encode(sequence)
        with torch.no_grad():
            alone = wrapped.model(torch.tensor([ids]), position_ids=torch.tensor([wrapped._positions(ids)]),
                                  return_hidden=True)[0]
        assert _relative_error(embedding.per_token, alone) <= RTOL


def test_molecule_metrics_on_known_smiles():
    generated = ["CCO", "OCC", "C1=CC=CC=C1", "c1ccccc1", "not_a_smiles", "C(", "CCN"]
    report = molecule_metrics(generated, reference=["CCO", "CCCC"])
    assert report.validity == pytest.approx(5 / 7)
    # valid canonical: CCO, CCO, c1ccccc1, c1ccccc1, CCN -> 3 unique; CCO is in the reference
    assert report.uniqueness == pytest.approx(3 / 5)
    assert report.novelty == pytest.approx(2 / 3)


def test_generate_molecules_reports_metrics_over_generated_molecules():
    wrapped = _wrapped("molecules")
    result = wrapped.generate_molecules(["CCO", "CCN", "CCC"], num_molecules=4, max_new_tokens=10, seed=0)
    assert len(result.smiles) == 4 and all("." not in s for s in result.smiles)
    assert 0.0 <= result.validity <= 1.0 and len(result.canonical) == 4


def test_generation_needs_a_causal_model_and_the_right_modality():
    wrapped = _wrapped("dna")
    with pytest.raises(InferenceError, match="protein"):
        wrapped.infill([], "AC??GT")
    with pytest.raises(InferenceError, match="prompt"):
        wrapped.generate("", 5)


def test_forked_context_state_samples_exactly_like_a_fresh_pass():
    """generate_protein feeds the homologs once and forks the state per sample: each sample
    must equal the one a fresh pass over the whole prompt gives with the same seed."""
    wrapped = _wrapped("protein")
    homologs = ["MKTAYIAK", "MKSAYLAKQ"]
    forked = wrapped.generate_protein(homologs, num_sequences=3, max_new_tokens=12, seed=4)
    context = wrapped._homolog_context(homologs) + [wrapped.tokenizer.cls_id]
    from modeling.sampling import SamplingSettings

    for n in range(3):
        fresh = wrapped._generate_from(context, len(context), 12, SamplingSettings(), 4 + n, ["<cls>", "<eos>"])
        assert forked[n] == fresh.text


def test_smiles_bracket_atoms_are_content_not_special_tokens():
    wrapped = _wrapped("molecules")
    special = {wrapped.tokenizer.vocab[i] for i in wrapped._special_ids()}
    assert special == {"[PAD]", "[BEG]", "[END]", "[UNK]"}
    assert "[C@@H]" in wrapped.tokenizer.vocab
