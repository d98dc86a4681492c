"""bench/train_step.py on CPU at tiny sizes (a real DeepSpeed engine, fp32), the Transformer++
baseline it compares against (size matching, causality, FLOP count), the profile grouping and
the plot. The GPU numbers themselves are not measured here."""
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import plot, step_profile  # noqa: E402
from bench.transformer_baseline import (  # noqa: E402
    TransformerConfig, build_transformer, flops_per_token, forward_flops_per_token, match_parameter_count,
    parameter_count,
)

TINY_MODELS = ["protein_tiny", "transformer_protein_tiny"]
CONTEXTS = [64, 128]
TOKENS_PER_STEP = 256
ROW_FIELDS = {"host_path", "model", "family", "params", "context_len", "micro_batch", "grad_accum", "tokens_per_step",
              "activation_checkpointing", "flops_per_token", "status", "step_ms", "step_ms_all", "tokens_per_s",
              "model_tflops", "mfu", "mfu_datasheet", "peak_memory_gib", "static_memory_gib", "loss_per_token"}
META_FIELDS = {"date", "device", "torch", "cuda", "triton", "deepspeed", "python", "git_commit", "dtype",
               "zero_stage", "tokens_per_step", "steps", "warmup", "matmul_ceiling_tflops", "matmul_ceiling_size",
               "matmul_ceiling_dtype", "datasheet_tflops", "elapsed_s", "models"}


def xlstm_parameters(name):
    from modeling import build_model, load_model_config

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(load_model_config(name)).parameters())


def run_bench(out, *extra, models=TINY_MODELS, contexts=CONTEXTS):
    env = {**os.environ, "TRITON_INTERPRET": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    argv = [sys.executable, str(REPO / "bench" / "train_step.py"), "--models", ",".join(models),
            "--contexts", ",".join(map(str, contexts)), "--tokens-per-step", str(TOKENS_PER_STEP),
            "--steps", "2", "--warmup", "1", "--activation-checkpointing", "on", "--out", str(out), *extra]
    return subprocess.run(argv, env=env, cwd=str(out.parent), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train_step") / "train_step.json"
    proc = run_bench(out, "--profile")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads(out.read_text())


# ------------------------------------------------------------------------ the benchmark run
def test_results_have_every_field_and_positive_throughput(bench_run):
    _, report = bench_run
    assert META_FIELDS <= set(report["meta"])
    meta = report["meta"]
    assert meta["dtype"] == "fp32" and meta["matmul_ceiling_tflops"] > 0 and meta["datasheet_tflops"] is None
    rows = report["results"]
    assert [(r["model"], r["context_len"]) for r in rows] == [(m, c) for m in TINY_MODELS for c in CONTEXTS]
    for row in rows:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["status"] == "ok", row["status"]
        assert row["activation_checkpointing"] is True
        assert row["micro_batch"] * row["grad_accum"] * row["context_len"] == TOKENS_PER_STEP
        assert row["tokens_per_s"] > 0 and row["step_ms"] > 0 and len(row["step_ms_all"]) == 2
        assert row["tokens_per_s"] == pytest.approx(TOKENS_PER_STEP / (row["step_ms"] / 1e3))
        assert row["model_tflops"] == pytest.approx(row["flops_per_token"] * row["tokens_per_s"] / 1e12)
        assert row["mfu"] == pytest.approx(row["model_tflops"] / meta["matmul_ceiling_tflops"])
        # an untrained model on uniform random tokens: loss near ln(vocabulary)
        assert abs(row["loss_per_token"] - math.log(38)) < 0.5


def test_baseline_in_the_run_is_matched_and_counted_by_its_formula(bench_run):
    _, report = bench_run
    rows = {(r["model"], r["context_len"]): r for r in report["results"]}
    target = xlstm_parameters("protein_tiny")
    assert rows[("protein_tiny", 64)]["params"] == target
    cfg = match_parameter_count(target, 38)
    for context in CONTEXTS:
        row = rows[("transformer_protein_tiny", context)]
        assert abs(row["params"] - target) / target <= 0.03
        assert row["flops_per_token"] == flops_per_token(cfg, context)
    assert report["meta"]["models"]["transformer_protein_tiny"]["matched_to"] == "protein_tiny"


def test_profile_groups_the_step(bench_run):
    out, report = bench_run
    xlstm, transformer = report["profiles"]["protein_tiny"], report["profiles"]["transformer_protein_tiny"]
    for profile in (xlstm, transformer):
        assert profile["context_len"] == CONTEXTS[0]
        assert set(profile["categories_ms"]) == set(step_profile.CATEGORIES)
        assert sum(profile["categories_ms"].values()) == pytest.approx(profile["total_ms"])
        assert profile["categories_ms"]["optimizer"] > 0 and profile["categories_ms"]["matmul projections"] > 0
        assert profile["top_ops"] and {"forward", "backward", "optimizer_step"} <= set(profile["host_phases_ms"])
    assert xlstm["categories_ms"]["mLSTM kernels"] > 0 and xlstm["categories_ms"]["conv"] > 0
    assert xlstm["categories_ms"]["attention"] == 0
    assert transformer["categories_ms"]["attention"] > 0 and transformer["categories_ms"]["mLSTM kernels"] == 0
    markdown = out.with_suffix(".md").read_text()
    assert "| protein_tiny | 0.1M | 128 |" in markdown and "#### transformer_protein_tiny, context 64" in markdown


def test_trainer_host_path_trains_the_same_steps(bench_run, tmp_path):
    """Batches from host memory and per-micro-batch host syncs change the timing, not the math."""
    _, report = bench_run
    out = tmp_path / "trainer_path.json"
    proc = run_bench(out, "--trainer-host-path", models=["protein_tiny"], contexts=[64])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    device_row = next(r for r in report["results"] if (r["model"], r["context_len"]) == ("protein_tiny", 64))
    assert row["host_path"] == "trainer" and device_row["host_path"] == "device"
    assert row["status"] == "ok" and row["tokens_per_s"] > 0
    assert row["loss_per_token"] == pytest.approx(device_row["loss_per_token"], rel=1e-6)


def test_existing_results_are_not_overwritten_without_force(bench_run):
    out, _ = bench_run
    before = out.read_bytes()
    proc = run_bench(out)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert out.read_bytes() == before


def test_unknown_model_is_one_clear_error(tmp_path):
    proc = run_bench(tmp_path / "r.json", models=["prot_xlstm_7m"])
    assert proc.returncode == 2
    assert "error: --models: unknown model 'prot_xlstm_7m'" in proc.stderr and "protein_tiny" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r.json").exists()


def test_plot_draws_one_line_per_model_in_context_order(bench_run, tmp_path):
    out, report = bench_run
    written = plot.write_plot(out, tmp_path / "train_step.png", force_svg=True)
    assert written.suffix == ".svg"
    lines = [e for e in ET.parse(written).getroot().iter("{http://www.w3.org/2000/svg}polyline")]
    assert [e.get("data-model") for e in lines] == TINY_MODELS
    for line in lines:
        xs = [float(p.split(",")[0]) for p in line.get("points").split()]
        assert len(xs) == len(CONTEXTS) and xs == sorted(xs)
    # higher throughput is drawn higher (smaller y) on the log axis
    ys = {e.get("data-model"): float(e.get("points").split()[0].split(",")[1]) for e in lines}
    tps = {r["model"]: r["tokens_per_s"] for r in report["results"] if r["context_len"] == CONTEXTS[0]}
    slower, faster = sorted(TINY_MODELS, key=tps.get)
    assert ys[faster] < ys[slower]


def test_plot_marks_out_of_memory_contexts(tmp_path):
    results = [dict(model="m", family="xlstm", context_len=2048, status="ok", tokens_per_s=1e5),
               dict(model="m", family="xlstm", context_len=4096, status="OOM", tokens_per_s=None)]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dict(meta={}, results=results)))
    root = ET.parse(plot.write_plot(path, tmp_path / "p.svg")).getroot()
    assert [e.get("class") for e in root.iter("{http://www.w3.org/2000/svg}text") if e.get("class")] == ["oom"]


# ------------------------------------------------------------------------ Transformer++ baseline
@pytest.mark.parametrize("name", ["prot_xlstm_102m", "prot_xlstm_26m"])
def test_baseline_matches_paper_model_sizes(name):
    target = xlstm_parameters(name)
    cfg = match_parameter_count(target, 38)
    with torch.device("meta"):
        model = build_transformer(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert count == parameter_count(cfg)
    assert abs(count - target) / target <= 0.03
    assert cfg.head_dim == 128 and 2.5 <= cfg.ffn_dim / cfg.d_model <= 3.5 and cfg.num_layers >= 8


def test_baseline_is_causal():
    cfg = TransformerConfig(vocab_size=38, d_model=64, num_layers=2, num_heads=2, ffn_dim=128)
    model = build_transformer(cfg).eval()
    ids = torch.randint(0, 38, (2, 40))
    changed = ids.clone()
    changed[:, 25] = (ids[:, 25] + 1) % 38
    with torch.no_grad():
        before, after = model(ids), model(changed)
    assert torch.allclose(before[:, :25], after[:, :25], rtol=0, atol=1e-6)
    assert (before[:, 25:] - after[:, 25:]).abs().amax(-1).min() > 1e-4


def test_baseline_flops_hand_count():
    d, layers, f, V, S = 64, 2, 128, 38, 32
    cfg = TransformerConfig(vocab_size=V, d_model=d, num_layers=layers, num_heads=2, ffn_dim=f)
    # per layer: qkv 2*64*192, out 2*64*64, gate+up 2*64*256, down 2*128*64, causal attention
    # 2 matmuls x 2 FLOPs x (S/2 keys on average) x d = 2*32*64; plus the head 2*64*38
    layer = 24576 + 8192 + 32768 + 16384 + 4096
    assert forward_flops_per_token(cfg, S) == layers * layer + 4864
    assert flops_per_token(cfg, S) == 3 * (layers * layer + 4864)
    # the matmul part against torch's FLOP counter on a real forward (attention excluded:
    # the counter sees SDPA on CPU as one uncounted op, or counts the full square)
    from torch.utils.flop_counter import FlopCounterMode

    model = build_transformer(cfg)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, V, (1, S)))
    counted = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "mm" in str(op))
    assert counted == S * (layers * (layer - 2 * S * d) + 2 * d * V)


# ------------------------------------------------------------------------ profile grouping
@pytest.mark.parametrize("chain,kernel,expected", [
    (["aten::mm", "aten::matmul", "aten::linear", "bench/forward"], None, "matmul projections"),
    (["aten::mm", "MmBackward0", "autograd::engine::evaluate_function: MmBackward0"], None, "matmul projections"),
    (["aten::mul", "MmBackward0"], None, "other"),                      # recomputed elementwise op
    (["aten::mm", "aten::linear", "NativeLayerNormBackward0"], None, "matmul projections"),
    (["aten::mul", "aten::rms_norm", "bench/forward"], None, "norms"),
    (["aten::native_layer_norm_backward", "NativeLayerNormBackward0"], None, "norms"),
    (["aten::bmm", "aten::matmul", "bench/mlstm_cell", "bench/forward"], "sm90_gemm", "mLSTM kernels"),
    (["_MLSTMChunkwiseTritonBackward", "autograd::engine::evaluate_function: _MLSTMChunkwiseTritonBackward"],
     "_chunk_dqk_kernel", "mLSTM kernels"),
    (["aten::_flash_attention_backward", "ScaledDotProductFlashAttentionBackward0"], "flash_bwd_kernel", "attention"),
    (["aten::cudnn_convolution", "aten::convolution", "aten::conv1d"], None, "conv"),
    (["aten::nll_loss_forward", "aten::cross_entropy_loss"], None, "loss"),
    (["aten::add_", "aten::_foreach_add_", "bench/optimizer_step"], None, "optimizer"),
    (["c10d::allreduce_", "bench/optimizer_step"], "ncclDevKernel_AllReduce", "communication"),
    (["aten::embedding", "bench/forward"], None, "other"),
])
def test_profile_categories(chain, kernel, expected):
    assert step_profile.categorize(chain, kernel) == expected


def test_comparisons_report_the_issue_targets():
    from bench.step_models import ModelSpec
    from bench.step_report import comparisons

    def spec(name, family, matched_to=None):
        return ModelSpec(name, family, "", 1, None, None, True, matched_to=matched_to)

    def row(model, context, tokens_per_s, mfu, micro_batch=1, peak=None, static=None):
        return dict(model=model, context_len=context, status="ok", tokens_per_s=tokens_per_s, mfu=mfu,
                    micro_batch=micro_batch, peak_memory_gib=peak, static_memory_gib=static)

    rows = [row("x", 2048, 1000.0, 0.45, micro_batch=16, peak=30.0, static=2.0),
            row("x", 65536, 900.0, None, peak=12.0, static=2.0),
            row("x", 131072, 800.0, None, peak=22.0, static=2.0),
            row("t", 2048, 1250.0, 0.5, micro_batch=16), row("t", 131072, 100.0, None),
            dict(model="t", context_len=65536, status="OOM")]
    lines = comparisons(rows, {"x": spec("x", "xlstm"), "t": spec("t", "transformer", matched_to="x")})
    assert lines == [
        "- x: MFU (measured ceiling) 2048: 45.0% (target >= 40% at 2^11..2^15)",
        "- x: tokens/s at context 131072 / at 2048 = 0.80 (target at 2^17 / 2^11: >= 0.77, i.e. within 1.3x)",
        "- x vs t, tokens/s ratio by context: 2048: 0.80x, 131072: 8.00x (target > 1 from 2^13, > 5 at 2^17)",
        "- x: peak memory at micro-batch 1: 65536: 12.0 GiB (10.0 above static); "
        "131072: 22.0 GiB (20.0 above static, x2.00) (linear in S: x2 per doubling)",
    ]
