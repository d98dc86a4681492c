"""The paper's evaluations inside training (run config section `eval`, pretrain.config.EvalConfig).

Every rank takes part: the full weights are gathered on every rank (ZeRO-3 parameters through
DeepSpeed's GatheredParameters, a collective all ranks enter; ZeRO 0-2 hold them already), each
rank wraps them as the inference API wraps an export (modeling.inference.BioXLSTM, context
parallelism not involved), the suites' work units are shared round-robin and gathered
(evaluation.runner), and rank 0 writes the figures to metrics.jsonl / TensorBoard and the report
with its plots to RUN/eval/ (replaced each time: the latest evaluation). Because the same suite
code runs on the same weights, the figures equal `bioxlstm eval` on the export of the same
checkpoint.

Cost: an evaluation due every `eval.every` steps is skipped while evaluation has used more than
`eval.max_time_share` of the run's wall time; the decision is agreed by all ranks.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch.distributed as dist

EVAL_DIR = "eval"


class InTrainingEvaluator:
    def __init__(self, cfg, parallel, run_dir: Path):
        self.cfg = cfg
        self.parallel = parallel
        self.run_dir = Path(run_dir)
        self.enabled = bool(cfg.eval.suites)
        self.started = time.perf_counter()
        self.seconds_spent = 0.0

    def due(self, step: int, done: bool) -> bool:
        """Whether to evaluate after `step` (the same answer on every rank)."""
        if not self.enabled:
            return False
        every = self.cfg.eval.every
        wanted = (done and self.cfg.eval.at_end) or bool(every and step % every == 0)
        if not wanted or done:
            return wanted
        from pretrain.parallel import ranks_with

        elapsed = time.perf_counter() - self.started
        within_budget = self.seconds_spent <= self.cfg.eval.max_time_share * elapsed
        return bool(ranks_with(within_budget))       # any rank within budget: all evaluate

    def run(self, engine, step: int, stage_index: int) -> dict:
        """Evaluate the engine's current weights; returns the flat figures (on rank 0; the other
        ranks' records are not logged). The training's random states (torch, Python, NumPy) are
        left as they were, so an evaluation never changes what training does next."""
        with random_states_kept(engine.device):
            return self._run(engine, step, stage_index)

    def _run(self, engine, step: int, stage_index: int) -> dict:
        from evaluation.report import flat_figures, write_report
        from evaluation.runner import make_suites, run_suites

        started = time.perf_counter()
        model = self._inference_model(engine)
        request = eval_request(self.cfg, stage_index)
        suites = make_suites(self.cfg.eval.suites, request)
        world = self.parallel.world_size
        results = run_suites(model, suites, rank=self.parallel.rank, world_size=world,
                             gather=_gather_objects if world > 1 else None)
        figures = flat_figures(results) if self.parallel.rank == 0 else {}
        if self.parallel.rank == 0:
            meta = {"model": f"{self.run_dir} step {step}", "data": request.data, "seed": request.seed,
                    "quick": request.quick, "step": step, "request": vars(request), "figures": figures}
            write_report(results, suites, self.run_dir / EVAL_DIR, meta, overwrite=True)
        del model
        seconds = time.perf_counter() - started
        self.seconds_spent += seconds
        elapsed = time.perf_counter() - self.started
        return dict(figures, eval_seconds=seconds, eval_share=self.seconds_spent / elapsed if elapsed else 0.0)

    def _inference_model(self, engine):
        """A plain copy of the full model on this rank, in the engine's dtype, in eval mode."""
        from data_pipeline.manifest import read_manifest
        from data_pipeline.tokenizers import load_tokenizer
        from modeling import build_model
        from modeling.inference import BioXLSTM

        state = full_state_dict(engine.module, self.cfg.train.zero_stage)
        dtype = next(iter(state.values())).dtype
        model = build_model(self.cfg.model).to(dtype)
        model.load_state_dict(state)
        model = model.to(engine.device).eval()
        tokenizer = load_tokenizer(read_manifest(Path(self.cfg.data.shards))["tokenizer"])
        return BioXLSTM(model, self.cfg.model, tokenizer, engine.device)


def eval_request(cfg, stage_index: int):
    """The EvalRequest of a run config's `eval` section at curriculum stage `stage_index`: data
    defaults to the run's shards, the context to the stage's, protein-icl's lengths to the
    curriculum's so far."""
    from evaluation.base import EvalRequest

    e, stages = cfg.eval, cfg.curriculum.stages
    contexts = tuple(sorted({s.context_len for s in stages[:stage_index + 1]}))
    return EvalRequest(data=e.data or cfg.data.shards, quick=e.quick, seed=e.seed,
                       context_len=e.context_len or stages[stage_index].context_len, context_lens=contexts,
                       novelty_reference=e.novelty_reference, train_data=cfg.data.shards,
                       options=dict(e.options), batch_size=e.batch_size)


@contextlib.contextmanager
def random_states_kept(device):
    """Restore the global torch (CPU and this CUDA device), Python and NumPy random states on exit
    (building the evaluation model draws initial weights from them)."""
    import random

    import numpy as np
    import torch

    cuda = [device] if getattr(device, "type", str(device)) == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def full_state_dict(module, zero_stage: int) -> dict:
    """Every parameter and buffer in full on this rank (a collective under ZeRO-3)."""
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _gather_objects(payload) -> list:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    return gathered


