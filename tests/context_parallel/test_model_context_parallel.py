"""Model-level context parallelism: a small xLSTM (mLSTM blocks with causal conv and RoPE) on
CP = 2 and CP = 4 real gloo processes equals the same model on one process.

Each rank builds the same model (same seed; every parameter perturbed with noise so the gates,
skip and norms are not at their symmetric init), runs the whole batch itself as the single-rank
result, then its contiguous slice with `cp_group`. Compared: this rank's slice of the logits,
the loss (sum over ranks of local token-loss sums / global token count) and every parameter's
gradient (the local gradients summed over the CP group, as DeepSpeed's reduction does).
Variants: causal LM, weight-tied bidirectional MLM, alternating-direction MLM, reverse-
complement parameter sharing, data-given position ids, the sequence-index embedding (its
running count of separator tokens crosses rank boundaries), and the papers' official forms
(gates after RoPE; whole-block and even-reversed bidirectional stacks whose reversed pass runs at
the global reversed index), and packed rows of several of them (document starts inside a
slice, at slice edges, several in one chunk).

Two precisions, two tolerances:
- float64 (the block's fp32 cast of the gate pre-activations is kept at float64 for this run, see
  `_pure_float64`): logits, loss and every parameter gradient relative <= 1e-10 per tensor
  (max abs error / max abs value). This proves the CP computation exact for every parameter.
- fp32: logits and loss relative <= 1e-5 per tensor; gradients relative <= 1e-5 over all
  parameters together (norm of the difference / norm of the gradient). Per tensor, a few fp32
  gradients are sums that cancel heavily (forget-gate bias: d logsigmoid/df ~ 0.003-0.05 at its
  init of 3..6, terms of both signs); their fp32 value moves by ~1e-5 relative under a mere
  change of summation order (single rank, chunk 8 vs chunk 16), so a per-tensor fp32 bound
  there would measure summation order, not context parallelism.
"""

import contextlib

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from spawn_ranks import run_ranks

FP32_RTOL, FP64_RTOL = 1e-5, 1e-10
BATCH, SEQ_LEN = 2, 32
BASE = dict(d_model=16, num_blocks=2, num_heads=2, proj_factor=2.0, conv_kernel_size=4,
            qk_block_size=4, chunk_size=8, kernel_backend="torch")
VARIANTS = {
    "causal_lm": dict(vocab_size=13, position_encoding="rope_inner", head="lm"),
    "weight_tied_bidirectional": dict(vocab_size=13, position_encoding="rope_head", head="mlm",
                                      bidirectional="weight_tied"),
    "alternating_bidirectional": dict(vocab_size=13, position_encoding="rope_head", head="mlm",
                                      bidirectional="alternating", num_blocks=3),
    "rc_param_sharing": dict(vocab_size=16, position_encoding="rope_head", head="mlm",
                             rc_mode="param_sharing"),
    "data_positions": dict(vocab_size=13, position_encoding="rope_inner", head="lm"),
    "sequence_index": dict(vocab_size=13, position_encoding="rope_inner", head="lm",   # counts cls=9
                           num_sequence_index=8, cls_token_id=9),                      # across ranks
    # the official forms: Prot-xLSTM gates after RoPE; DNA-xLSTM whole-block weight-tied and
    # even-reversed alternating stacks whose reversed passes take the global reversed index
    "official_prot": dict(vocab_size=13, position_encoding="rope_inner", head="lm", gates_after_rope=True,
                          norm_weight_offset=True, proj_multiple_of=8, proj_rounding="up", proj_factor=1.5),
    "official_weight_tied": dict(vocab_size=12, position_encoding="rope_head", head="mlm", mlstm_bias=True,
                                 bidirectional="weight_tied", bidirectional_residual="whole_block",
                                 reversed_positions="flipped_index", norm_weight_offset=True),
    "official_alternating": dict(vocab_size=12, position_encoding="rope_head", head="mlm", num_blocks=3,
                                 bidirectional="alternating", reversed_blocks="even",
                                 reversed_positions="flipped_index"),
}
# packed rows (document_starts): the same forms with documents that begin inside a slice, exactly
# at a slice edge, several in one chunk, and one of length 1; compared with the packed single
# rank, which tests/modeling/test_document_resets.py proves equal to every document run alone
PACKED = ("causal_lm", "sequence_index", "official_weight_tied", "official_alternating", "rc_param_sharing")
VARIANTS.update({f"packed_{name}": VARIANTS[name] for name in PACKED})


def _relative(actual, expected):
    scale = expected.abs().max()
    return ((actual - expected).abs().max() / scale).item() if scale > 0 else actual.abs().max().item()


def _model(name, dtype):
    from modeling import ModelConfig, build_model

    torch.manual_seed(1)
    model = build_model(ModelConfig.from_dict({**BASE, **VARIANTS[name]}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


@contextlib.contextmanager
def _pure_float64():
    """Keep float64 tensors float64 through `Tensor.float()` (the mLSTM block casts the gate
    pre-activations with it, meant for bf16 models), so the float64 run has no fp32 step."""
    original = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: (
        self if self.dtype == torch.float64 else original(self, *args, **kwargs))
    try:
        yield
    finally:
        torch.Tensor.float = original


def _batch(name, vocab_size):
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(7, 12, (BATCH, SEQ_LEN), generator=g)   # DNA bases for the RC model
    labels = torch.randint(0, vocab_size, (BATCH, SEQ_LEN), generator=g)
    labels[torch.rand(BATCH, SEQ_LEN, generator=g) < 0.25] = -100
    position_ids = None
    if name == "data_positions":            # positions restart inside the sequence, as for proteins
        position_ids = torch.cat([torch.arange(13), torch.arange(SEQ_LEN - 13)]).expand(BATCH, SEQ_LEN)
    document_starts = None
    if name.startswith("packed_"):          # slices of 8 (CP = 4) or 16 (CP = 2), chunks of 8
        document_starts = torch.zeros(BATCH, SEQ_LEN, dtype=torch.bool)
        document_starts[0, [3, 8, 16, 17, 19, 31]] = True
        document_starts[1, [5, 24, 30]] = True
    return input_ids, labels, position_ids, document_starts


def _loss_sum(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def _compare(name, rank, cp_size, group, dtype):
    from pretrain.parallel import split_sequence_for_cp

    model = _model(name, dtype)
    input_ids, labels, position_ids, document_starts = _batch(name, model.cfg.vocab_size)
    tokens = (labels != -100).sum()

    full_logits = model(input_ids, position_ids=position_ids, document_starts=document_starts)
    full_loss = _loss_sum(full_logits, labels) / tokens
    full_loss.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    split = lambda t: None if t is None else split_sequence_for_cp(t, rank, cp_size)   # noqa: E731
    logits = model(split(input_ids), position_ids=split(position_ids), cp_group=group,
                   document_starts=split(document_starts))
    loss = _loss_sum(logits, split(labels)) / tokens
    loss.backward()
    total_loss = loss.detach().clone()
    dist.all_reduce(total_loss, group=group)
    errors = {"logits": _relative(logits.detach(), split(full_logits.detach())),
              "loss": _relative(total_loss, full_loss.detach())}
    diff_sq, norm_sq = 0.0, 0.0
    for n, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad, group=group)
        errors[f"grad:{n}"] = _relative(grad, full_grads[n])
        diff_sq += ((grad - full_grads[n]).double() ** 2).sum().item()
        norm_sq += (full_grads[n].double() ** 2).sum().item()
    errors["grad:all parameters (norm)"] = (diff_sq / norm_sq) ** 0.5
    return errors


def model_checks(rank, world_size):
    group = dist.new_group(list(range(world_size)))
    results = {}
    for name in VARIANTS:
        results[("fp32", name)] = _compare(name, rank, world_size, group, torch.float32)
        with _pure_float64():
            results[("fp64", name)] = _compare(name, rank, world_size, group, torch.float64)
    return results


@pytest.fixture(scope="module", params=[2, 4], ids=["cp2", "cp4"])
def per_rank(request):
    return request.param, run_ranks(model_checks, request.param)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_cp_float64_matches_single_rank_for_every_parameter(per_rank, variant):
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        bad = {k: f"{v:.1e}" for k, v in result[("fp64", variant)].items() if not v <= FP64_RTOL}
        assert not bad, f"CP={cp_size} rank {rank} {variant} float64: relative errors above {FP64_RTOL}: {bad}"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_cp_fp32_matches_single_rank(per_rank, variant):
    cp_size, results = per_rank
    for rank, result in enumerate(results):
        errors = result[("fp32", variant)]
        checked = {k: errors[k] for k in ("logits", "loss", "grad:all parameters (norm)")}
        bad = {k: f"{v:.1e}" for k, v in checked.items() if not v <= FP32_RTOL}
        assert not bad, f"CP={cp_size} rank {rank} {variant} fp32: relative errors above {FP32_RTOL}: {bad}"
