"""Token selection: temperature, top-k and top-p keep exactly the tokens they should, greedy is
argmax, a seed fixes the draw, and the sampled frequencies follow the filtered distribution."""
import pytest
import torch

from modeling.sampling import SamplingSettings, filter_logits, sample_next_token, state_nbytes


def _fresh_logits(batch=3, vocab=11, seed=5):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def test_top_k_keeps_the_k_largest_logits():
    logits = _fresh_logits()
    kept = torch.isfinite(filter_logits(logits, SamplingSettings(top_k=4)))
    expected = torch.zeros_like(kept).scatter(-1, logits.topk(4, dim=-1).indices, True)
    assert torch.equal(kept, expected)


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    logits = _fresh_logits().double()
    for p in (0.3, 0.7, 0.95):
        kept = torch.isfinite(filter_logits(logits, SamplingSettings(top_p=p)))
        probs = torch.softmax(logits, dim=-1)
        for row in range(logits.shape[0]):
            ordered = probs[row].sort(descending=True)
            mass = ordered.values.cumsum(0)
            size = int((mass < p).sum()) + 1          # first prefix whose mass reaches p
            expected = set(ordered.indices[:size].tolist())
            assert set(kept[row].nonzero().flatten().tolist()) == expected, (p, row)


def test_temperature_scales_logits_and_zero_is_greedy():
    logits = _fresh_logits()
    assert torch.allclose(filter_logits(logits, SamplingSettings(temperature=0.5)), logits * 2, rtol=1e-6)
    assert torch.equal(sample_next_token(logits, SamplingSettings(temperature=0)), logits.argmax(-1))


def test_banned_tokens_are_never_sampled_and_seed_fixes_the_draw():
    logits = _fresh_logits(batch=1)
    banned = logits.topk(3, dim=-1).indices[0].tolist()
    draws = [int(sample_next_token(logits, SamplingSettings(), torch.Generator().manual_seed(s), banned)[0])
             for s in range(200)]
    assert not set(draws) & set(banned)
    again = [int(sample_next_token(logits, SamplingSettings(), torch.Generator().manual_seed(s), banned)[0])
             for s in range(200)]
    assert draws == again


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = _fresh_logits(batch=1, vocab=6, seed=9)
    settings = SamplingSettings(temperature=0.8, top_k=4)
    probs = torch.softmax(filter_logits(logits, settings), dim=-1)[0]
    generator = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.bincount(torch.stack([sample_next_token(logits, settings, generator) for _ in range(n)]).flatten(),
                            minlength=6).double() / n
    # binomial standard error at n = 20000 is <= 0.0036; 5 sigma
    assert torch.allclose(counts, probs.double(), atol=0.018)


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)


def test_state_nbytes_counts_nested_tensors():
    state = [(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3)), {"conv": torch.zeros(1, 3, 8, dtype=torch.bfloat16)}]
    assert state_nbytes(state) == (24 + 6) * 4 + 24 * 2
