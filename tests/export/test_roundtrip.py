"""Train -> checkpoint -> export -> load without the training stack gives the training model.

A tiny protein model trains 3 AdamW steps in 2 real gloo processes under DeepSpeed (ZeRO-3,
ZeRO-0, and ZeRO-3 sharded over a context-parallel group of 2); the engine's logits on a probe batch
after the last step are the reference. The export is loaded in a fresh interpreter where
`import deepspeed` (and megatron, submitit, webdataset) fails. Tolerances: fp32 export
max |diff| <= 1e-6 (the same fp32 weights, the same CPU kernels); bf16 export: relative error
||diff|| / ||logits|| <= 1e-2 (weights rounded to 8 mantissa bits, computed in fp32).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.export import CheckpointSource, export_checkpoint, resolve_checkpoint_dir

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def _logits_in_fresh_process(export_dir: Path, vocab_size: int, tmp_path: Path, compute_dtype: str = "") -> dict:
    out = tmp_path / f"{export_dir.name}_logits.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, str(HERE / "load_without_training_stack.py"), str(export_dir), str(out),
                    str(vocab_size)] + ([compute_dtype] if compute_dtype else []), check=True, env=env, cwd=REPO, timeout=120)
    return torch.load(out)


def _export(run_dir, config, tokenizer, out, dtype="fp32"):
    source = CheckpointSource(resolve_checkpoint_dir(run_dir), config, tokenizer, {"tokens_seen": 3 * 2 * 16})
    return export_checkpoint(source, out, dtype=dtype)


def test_fp32_export_of_zero3_checkpoint_reproduces_training_logits(zero3_run, protein_tokenizer, tmp_path):
    run_dir, config, train_logits = zero3_run
    export_dir = _export(run_dir, config, protein_tokenizer, tmp_path / "fp32")
    loaded = _logits_in_fresh_process(export_dir, config["vocab_size"], tmp_path)
    assert loaded["training_stack_modules"] == []
    assert loaded["dtype"] == "torch.float32"
    assert (loaded["logits"] - train_logits).abs().max().item() <= 1e-6


def test_bf16_export_is_within_bf16_rounding_of_training_logits(zero3_run, protein_tokenizer, tmp_path):
    """The stored weights are bf16; computing in fp32 isolates the export's own rounding."""
    from safetensors.torch import load_file

    run_dir, config, train_logits = zero3_run
    export_dir = _export(run_dir, config, protein_tokenizer, tmp_path / "bf16", dtype="bf16")
    stored = load_file(str(export_dir / "model.safetensors"))
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.bfloat16}
    loaded = _logits_in_fresh_process(export_dir, config["vocab_size"], tmp_path, "float32")
    relative = ((loaded["logits"] - train_logits).norm() / train_logits.norm()).item()
    assert relative <= 1e-2, relative


@pytest.mark.parametrize("zero_stage,cp_size", [(0, 1), (3, 2)], ids=["zero0-dp2", "zero3-dp1xcp2"])
def test_other_zero_stages_and_context_parallel_checkpoints_export_exactly(zero_stage, cp_size, protein_tokenizer,
                                                                           tmp_path):
    from deepspeed_checkpoint import write_checkpoint
    from tiny_models import tiny_model_config

    config = tiny_model_config("protein")
    run_dir = tmp_path / "run"
    train_logits = write_checkpoint(run_dir, config, zero_stage=zero_stage, world_size=2, cp_size=cp_size)
    export_dir = _export(run_dir, config, protein_tokenizer, tmp_path / "export")
    from modeling.inference import load
    from deepspeed_checkpoint import probe_batch

    with torch.no_grad():
        logits = load(export_dir).model(probe_batch(config["vocab_size"])).float()
    assert (logits - train_logits).abs().max().item() <= 1e-6

