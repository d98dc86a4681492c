"""End to end through the real trainer: `python -m pretrain.train` on 2 gloo ranks (ZeRO-3, a
2-stage curriculum, 4 steps, validation at the end) -> `bioxlstm export` -> a fresh interpreter
without DeepSpeed/Megatron/WebDataset recomputes the run's final validation loss from the
exported weights on the same validation batches. fp32: relative 1e-5 (the same weights; the
sum over tokens is reordered).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from launchers.main import main as bioxlstm

HERE = Path(__file__).parent
REPO = HERE.parent.parent
WORLD_SIZE = 2
FINAL_CONTEXT, FINAL_MICRO_BATCH, EVAL_BATCHES = 64, 1, 2

VALIDATION_LOSS_OF_EXPORT = """
import sys
for name in ("deepspeed", "megatron", "megatron.core", "submitit", "webdataset"):
    sys.modules[name] = None
import torch
from modeling.inference import load
model = load(sys.argv[1]).model
total, count = torch.zeros((), dtype=torch.float64), 0
with torch.no_grad():
    for batch in torch.load(sys.argv[2]):
        logits = model(batch["input_ids"], position_ids=batch["position_ids"])
        mask = batch["labels"] != -100
        total += torch.nn.functional.cross_entropy(logits[mask].float(), batch["labels"][mask], reduction="sum").double()
        count += int(mask.sum())
print(float(total / count))
"""


def _train(config_path: Path, log_dir: Path) -> None:
    from launchers.local_launch import rendezvous_store, worker_environ

    store = rendezvous_store(WORLD_SIZE, timeout_s=240)       # held by this process until the ranks end
    procs = []
    for rank in range(WORLD_SIZE):
        env = worker_environ(rank, WORLD_SIZE, store.port, agent_store=True,
                             base={**os.environ, "PYTHONPATH": str(REPO)})
        log = open(log_dir / f"rank{rank}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "pretrain.train", "--config", str(config_path)],
                                      env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = "\n".join((log_dir / f"rank{r}.log").read_text(errors="replace")[-3000:] for r in range(WORLD_SIZE))
    assert codes == [0] * WORLD_SIZE, logs


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from data_pipeline.demo import build_demo_shards

    root = tmp_path_factory.mktemp("trainer")
    shards = build_demo_shards(root / "shards", "protein")
    config = {
        "model": {**yaml.safe_load((REPO / "configs" / "models" / "protein_tiny.yaml").read_text()), "num_blocks": 2},
        "data": {"modality": "protein", "shards": str(shards), "num_workers": 1},
        "train": {"out_dir": str(root / "run"), "zero_stage": 3, "dtype": "fp32", "lr": 3e-3,
                  "checkpoint_every": 0, "eval_every": 0, "eval_batches": EVAL_BATCHES, "tensorboard": False,
                  "progress": False, "log_every": 1},
        "curriculum": {"stages": [
            {"context_len": 32, "micro_batch_size": 2, "tokens": 2 * 32 * 2 * WORLD_SIZE},
            {"context_len": FINAL_CONTEXT, "micro_batch_size": FINAL_MICRO_BATCH, "tokens": 2 * 64 * WORLD_SIZE},
        ]},
    }
    config_path = root / "run_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    _train(config_path, root)
    return root / "run", shards


def _validation_batches(run_dir: Path, path: Path) -> None:
    """The batches pretrain.validation scores at the final stage, from every data-parallel rank."""
    from data_pipeline.loader import build_loader
    from pretrain.config import load_run_config

    cfg = load_run_config(run_dir / "config.yaml")
    batches = []
    for dp_rank in range(WORLD_SIZE):
        loader = build_loader(cfg.data, "validation", FINAL_CONTEXT, FINAL_MICRO_BATCH, dp_rank, WORLD_SIZE,
                              seed=cfg.train.seed)
        for number, batch in enumerate(loader):
            if number >= EVAL_BATCHES:
                break
            batches.append(batch)
    torch.save(batches, path)


def test_trainer_checkpoint_exports_to_the_model_that_was_validated(trained_run, tmp_path):
    run_dir, _ = trained_run
    state = torch.load(sorted((run_dir / "checkpoints").glob("step_*/train_state_rank00000.pt"))[-1],
                       weights_only=False)
    assert state["step"] == 4 and state["last_val_loss"] is not None
    out = tmp_path / "export"
    assert bioxlstm(["export", str(run_dir), str(out)]) == 0
    card = (out / "README.md").read_text()
    assert f"| tokens trained | {state['tokens']:,} |" in card or str(state["tokens"]) in card
    assert "stage 2 of 2 (context 64)" in card and state["config_hash"] in card

    batches = tmp_path / "validation_batches.pt"
    _validation_batches(run_dir, batches)
    result = subprocess.run([sys.executable, "-c", VALIDATION_LOSS_OF_EXPORT, str(out), str(batches)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=True)
    exported_loss = float(result.stdout.strip().splitlines()[-1])
    assert abs(exported_loss - state["last_val_loss"]) <= 1e-5 * state["last_val_loss"], \
        (exported_loss, state["last_val_loss"])
