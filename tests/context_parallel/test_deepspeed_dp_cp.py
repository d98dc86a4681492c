"""DP = 2 x CP = 2 on 4 real gloo processes: one DeepSpeed step (ZeRO 0, 1, 2 and 3) equals one
single-process step on the whole batch.

Each rank builds the same model (same seed), takes its data-parallel share of the batch and its
context-parallel slice of every sequence (`split_sequence_for_cp`), scales its summed token loss
with `ParallelContext.loss_scale` and steps a real DeepSpeed engine given
`initialize_parallel(2).mpu` (ZeRO-3: after `ParallelContext.prepare_model_for_deepspeed`).
The reference is plain torch in the same process on the whole batch with the global token mean.
The optimizer is SGD without momentum so the parameter change is proportional to the gradient:
a wrong loss scale or a missing CP gradient term changes it (Adam's first step would hide
scale errors). Some labels are -100, unevenly per rank, so a per-rank mean would be wrong.
Tolerance: parameter updates relative 1e-5 (fp32).
"""

import pytest
import torch
import torch.nn.functional as F

from spawn_ranks import run_ranks

VOCAB, D_MODEL, HEADS, SEQ_LEN, GLOBAL_BATCH, LR = 11, 16, 2, 32, 4, 0.5
DP_SIZE, CP_SIZE = 2, 2
ZERO_STAGES = (0, 1, 2, 3)
RTOL = 1e-5


class TinyCPLanguageModel(torch.nn.Module):
    """Embedding -> causal depthwise conv (halo from the previous rank) -> mLSTM (state from the
    previous ranks) -> residual -> head: both context-parallel seams in one small model."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, D_MODEL)
        self.conv = torch.nn.Conv1d(D_MODEL, D_MODEL, 4, groups=D_MODEL)
        self.qkv = torch.nn.Linear(D_MODEL, 3 * D_MODEL)
        self.gates = torch.nn.Linear(D_MODEL, 2 * HEADS)
        self.out = torch.nn.Linear(D_MODEL, D_MODEL)
        self.head = torch.nn.Linear(D_MODEL, VOCAB)

    def forward(self, input_ids, cp_group=None):
        from kernels.mlstm.context_parallel import exchange_conv_halo, mlstm_context_parallel

        x = self.embed(input_ids)
        halo = exchange_conv_halo(x, 3, cp_group)
        x = x + F.silu(self.conv(torch.cat([halo, x], dim=1).transpose(1, 2)).transpose(1, 2))
        B, S, _ = x.shape
        heads = lambda t: t.reshape(B, S, HEADS, -1).transpose(1, 2)       # noqa: E731
        q, k, v = (heads(t) for t in self.qkv(x).chunk(3, dim=-1))
        i, f = (t.transpose(1, 2) for t in (self.gates(x) + 2.0).chunk(2, dim=-1))
        h = mlstm_context_parallel(q, k, v, i, f, cp_group, chunk_size=8, backend="torch")
        x = x + self.out(h.transpose(1, 2).reshape(B, S, D_MODEL))
        return self.head(x)


def _batch():
    g = torch.Generator().manual_seed(7)
    input_ids = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ_LEN), generator=g)
    labels = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ_LEN), generator=g)
    labels[torch.rand(GLOBAL_BATCH, SEQ_LEN, generator=g) < 0.3] = -100
    labels[0, : SEQ_LEN // 2] = -100                                       # uneven counts per rank
    return input_ids, labels


def _summed_token_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100, reduction="sum")


def dp_cp_step(rank, world_size):
    import deepspeed

    from pretrain.parallel import ParallelConfigError, initialize_parallel

    try:
        initialize_parallel(3)
        bad_size_error = None
    except ParallelConfigError as exc:
        bad_size_error = str(exc)
    ctx = initialize_parallel(CP_SIZE)
    mpu = ctx.mpu
    groups = {
        "dp": (ctx.dp_rank, ctx.dp_size, mpu.get_data_parallel_group_ranks()),
        "cp": (ctx.cp_rank, ctx.cp_size, mpu.get_sequence_parallel_world_size()),
        "dp_cp": mpu.get_sequence_data_parallel_world_size(),
        "mp": mpu.get_model_parallel_world_size(),
    }

    torch.manual_seed(0)
    reference = TinyCPLanguageModel()
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    input_ids, labels = _batch()

    # single process, whole batch, global token mean
    ref_opt = torch.optim.SGD(reference.parameters(), lr=LR)
    (_summed_token_loss(reference(input_ids), labels) / (labels != -100).sum()).backward()
    ref_grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.parameters())).item()
    ref_opt.step()
    ref_params = dict(reference.named_parameters())

    # DeepSpeed over the DP x CP grid: this rank's rows (DP) and slice of every sequence (CP)
    micro = GLOBAL_BATCH // ctx.dp_size
    rows = slice(ctx.dp_rank * micro, (ctx.dp_rank + 1) * micro)
    local_ids, local_labels = (ctx.split_sequence(t[rows]) for t in (input_ids, labels))
    global_tokens = ctx.global_token_count((local_labels != -100).sum())
    errors, grad_norms = {}, {}
    for stage in ZERO_STAGES:
        model = TinyCPLanguageModel()
        model.load_state_dict(start)
        config = {
            "train_micro_batch_size_per_gpu": micro,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": 0.0,      # clipping would hide a wrong loss scale; the norm is compared
            "steps_per_print": 10**6,
        }
        ctx.prepare_model_for_deepspeed(model, config)
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                          config=config, mpu=mpu)
        scale = ctx.loss_scale(global_tokens, config)
        loss = _summed_token_loss(engine(local_ids, cp_group=ctx.cp_group), local_labels) * scale
        engine.backward(loss)
        engine.step()
        grad_norms[stage] = (engine.get_global_grad_norm(), ref_grad_norm)   # None: stage 0 without clipping
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
            for name, param in engine.module.named_parameters():
                expected = ref_params[name].detach() - start[name]
                actual = param.detach() - start[name]
                errors[(stage, name)] = ((actual - expected).abs().max() / expected.abs().max()).item()
    return {"errors": errors, "grad_norm": grad_norms, "groups": groups, "bad_size_error": bad_size_error}


@pytest.fixture(scope="module")
def per_rank():
    return run_ranks(dp_cp_step, DP_SIZE * CP_SIZE)


@pytest.mark.parametrize("stage", ZERO_STAGES)
def test_dp2_cp2_zero_step_matches_single_process(per_rank, stage):
    for rank, result in enumerate(per_rank):
        for (zero_stage, name), error in result["errors"].items():
            if zero_stage == stage:
                assert error <= RTOL, f"ZeRO-{stage} rank {rank} parameter {name}: update differs, relative {error:.2e}"


@pytest.mark.parametrize("stage", [s for s in ZERO_STAGES if s > 0])
def test_global_grad_norm_counts_each_gradient_once(per_rank, stage):
    for rank, result in enumerate(per_rank):
        engine_norm, reference_norm = result["grad_norm"][stage]
        engine_norm = float(engine_norm)
        assert abs(engine_norm - reference_norm) <= RTOL * reference_norm, f"rank {rank}: {engine_norm} vs {reference_norm}"


def test_groups_follow_megatron_layout(per_rank):
    # megatron-core order tp-cp-ep-dp-pp: CP ranks adjacent, DP ranks strided
    assert [r["groups"]["cp"] for r in per_rank] == [(0, 2, 2), (1, 2, 2), (0, 2, 2), (1, 2, 2)]
    assert [r["groups"]["dp"] for r in per_rank] == [(0, 2, [0, 2]), (0, 2, [1, 3]), (1, 2, [0, 2]), (1, 2, [1, 3])]
    assert all(r["groups"]["dp_cp"] == 4 and r["groups"]["mp"] == 1 for r in per_rank)


def test_world_size_not_divisible_by_cp_is_one_clear_error(per_rank):
    for result in per_rank:
        message = result["bad_size_error"]
        assert message is not None and "context_parallel_size=3" in message and "not divisible" in message
