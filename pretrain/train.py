"""`bioxlstm train`: the training loop. Setup, loop, checkpoint, log; helpers live beside it.

Exit codes (`main` and `TrainingResult.exit_code`):
    0   EXIT_OK         the curriculum (or train.max_steps) is done; final checkpoint written
    75  EXIT_PREEMPTED  stopped on SIGTERM/SIGUSR1/request_stop() after writing a checkpoint;
                        start the same command again (same out_dir) to continue
User-facing errors (bad config, damaged or incompatible checkpoint, a checkpoint that could not
be written, train.max_bad_steps consecutive non-finite steps) are raised as exceptions with
`user_facing = True`; the `bioxlstm` CLI prints them as one line and exits with 2 (the SLURM
job does not requeue those: a retry would fail the same way).

Faults. A step whose loss or gradient norm is not finite on any rank is skipped on every rank
(weights and optimizer state untouched, pretrain.nonfinite), logged ("skipped" in its
metrics record, a console line), and still counted: step, tokens and loader move on, the batch
is not retried. A periodic checkpoint that falls on a skipped step is written at the next good
one, so `latest` always holds the weights of a good step. After train.max_bad_steps skipped
steps in a row the run stops with NonFiniteStepsError naming the step and the last good
checkpoint. Collectives time out after train.collective_timeout_s, so a dead or hung peer
fails the surviving ranks instead of hanging them.

Run directory (train.out_dir): config.yaml (resolved config), metrics.jsonl (one line per step,
per validation pass and per evaluation), tensorboard/, eval/ (the latest in-training evaluation:
eval.json, eval.md, plots; pretrain.in_training_eval), checkpoints/{step_XXXXXXXX/, latest} (pretrain.checkpoint),
samples_rank*.jsonl with train.record_samples.

Loss and gradient scaling. Each optimizer step takes grad_accum micro-batches per rank. Every
rank counts its loss tokens over all of them, the counts are summed over the data x context
group, and each micro-batch backpropagates (summed token loss) x divisor / global count
(`ParallelContext.loss_scale`), so DeepSpeed's reduction gives the gradient of the true mean
token loss of the whole global batch, for any DP x CP layout and any ZeRO stage.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

EXIT_OK = 0
EXIT_PREEMPTED = 75


@dataclass
class TrainingResult:
    status: str                      # "completed" | "preempted"
    step: int
    tokens: int
    stage: int
    val_loss: Optional[float]
    run_dir: Path
    checkpoint: Optional[Path]

    @property
    def exit_code(self) -> int:
        return EXIT_PREEMPTED if self.status == "preempted" else EXIT_OK


def run_training(cfg, fork_from: Optional[str] = None, fork_stage: Optional[int] = None) -> TrainingResult:
    """`_run_training` inside a process-group session: whatever way it ends (done, preempted,
    error), the process groups are destroyed and its threads joined (pretrain/parallel.py)."""
    from pretrain.parallel import process_group_session

    with process_group_session() as session:
        return _run_training(cfg, fork_from, fork_stage, session)


def _run_training(cfg, fork_from: Optional[str], fork_stage: Optional[int], session) -> TrainingResult:
    """Train `cfg` (a RunConfig) to the end of its curriculum, resuming from `latest` if present.

    `fork_from` starts a new run from another run's checkpoint (weights, optimizer state);
    with `fork_stage=k` it starts at the beginning of stage k with a fresh loader, otherwise at
    the exact position of that checkpoint. Ignored when this run has a checkpoint of its own.
    """
    import os

    import torch

    os.environ.setdefault("LOCAL_RANK", "0")            # DeepSpeed asserts it; unset in a single process
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before anything imports deepspeed

    from data_pipeline.loader import build_loader
    from data_pipeline.progress import Progress
    from modeling import build_model, flops_per_token
    from pretrain import preemption
    from pretrain.checkpoint import CheckpointManager, read_latest_tag
    from pretrain.curriculum import Curriculum
    from pretrain.environment import write_environment_report
    from pretrain.engine import build_engine, set_learning_rate, set_stage_batch, summed_token_loss
    from pretrain.in_training_eval import InTrainingEvaluator
    from pretrain.metrics import MetricsLogger, SampleRecorder
    from pretrain.nonfinite import SKIPPED_REASON, BadStepCounter, drop_nonfinite_gradients, poison_nonfinite
    from pretrain.parallel import initialize_parallel, ranks_with
    from pretrain.resume import restore_run_position
    from pretrain.schedule import learning_rate
    from pretrain.train_state import TrainState
    from pretrain.validation import validation_loss

    # ---------------------------------------------------------------- setup
    signal_handlers = preemption.install_signal_handlers()
    check_vocabulary(cfg)
    parallel = initialize_parallel(cfg.parallel.context_parallel_size,
                                   collective_timeout_s=cfg.train.collective_timeout_s)
    run_dir = Path(cfg.train.out_dir)
    torch.manual_seed(cfg.train.seed)
    curriculum = Curriculum(cfg.curriculum.stages, cfg.train.grad_accum, parallel.dp_size)
    first = curriculum.stages[0]
    engine, ds_config = build_engine(build_model(cfg.model), cfg.train, parallel,
                                     first.micro_batch_size, first.grad_accum)
    session.engine = engine                             # destroyed at the session's end
    checkpoints = CheckpointManager(run_dir / "checkpoints", parallel.rank, cfg.train.keep_checkpoints)
    state = TrainState(rank=parallel.rank, world_size=parallel.world_size, config_hash=cfg.config_hash(),
                       model_config=cfg.model.to_dict())
    restore_run_position(state, engine, checkpoints, curriculum, read_latest_tag(checkpoints.root),
                         fork_from, fork_stage)
    if parallel.rank == 0:
        cfg.save(run_dir)      # after the checkpoint was accepted: a refused config overwrites nothing
        write_environment_report(run_dir)
    last_step = curriculum.total_steps if cfg.train.max_steps is None else min(curriculum.total_steps,
                                                                               cfg.train.max_steps)
    metrics = MetricsLogger(run_dir, parallel.rank, cfg.train.tensorboard, state.step, None,
                            cfg.train.peak_tflops, parallel.world_size)
    samples = SampleRecorder(run_dir, parallel.rank, cfg.train.record_samples, state.step)
    cp_group = parallel.cp_group if parallel.cp_size > 1 else None
    bar = Progress(total=last_step, initial=state.step, desc="train", unit="step",
                   disable=parallel.rank != 0 or not cfg.train.progress, interval_s=cfg.train.progress_interval_s)
    session.callback(metrics.close)
    session.callback(bar.close)
    plan, loader, batches, stopped = None, None, None, False
    evaluator = InTrainingEvaluator(cfg, parallel, run_dir)
    bad_steps, checkpoint_due = BadStepCounter(cfg.train.max_bad_steps, state.bad_steps_in_a_row), False

    # ---------------------------------------------------------------- loop
    engine.train()
    loss_tokens_seen = 0                                  # this process's run: for loss-bearing tokens/s
    metrics.throughput(state.tokens, loss_tokens_seen)    # start the tokens/s clock
    while state.step < last_step:
        if plan is None or curriculum.stage_at(state.step).index != plan.index:
            plan = curriculum.stage_at(state.step)      # enter a stage: new context length
            loader = build_loader(cfg.data, "train", plan.context_len, plan.micro_batch_size,
                                  parallel.dp_rank, parallel.dp_size, seed=cfg.train.seed + plan.index)
            if state.loader_state is not None and state.stage == plan.index:
                loader.load_state_dict(state.loader_state)
            state.stage, batches = plan.index, iter(loader)
            set_stage_batch(engine, plan.micro_batch_size, plan.grad_accum, parallel.dp_size)
            metrics.set_flops_per_token(flops_per_token(cfg.model, plan.context_len))

        lr = learning_rate(state.tokens, curriculum.total_tokens, cfg.train)
        set_learning_rate(engine, lr)
        micro_batches, step_keys = [], []
        for _ in range(plan.grad_accum):
            micro_batches.append({k: parallel.split_sequence(v) for k, v in next(batches).items()})
            step_keys.extend(loader.last_batch_keys)
        local_tokens = sum(int((b["labels"] != -100).sum()) for b in micro_batches)
        global_tokens = parallel.global_token_count(local_tokens)
        scale = parallel.loss_scale(global_tokens, ds_config)
        device = engine.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)   # on the device: no sync per micro-batch
        for index, batch in enumerate(micro_batches):
            engine.set_gradient_accumulation_boundary(index == len(micro_batches) - 1)
            logits = engine(batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                            document_starts=batch["document_starts"].to(device), cp_group=cp_group)
            loss = summed_token_loss(logits, batch["labels"].to(device))
            engine.backward(poison_nonfinite(loss) * scale, scale_wrt_gas=False)  # NaN grads if non-finite
            loss_sum += loss.detach().double()
        dropped = drop_nonfinite_gradients(engine, group=None)   # ZeRO-0 fp32; DeepSpeed checks the others
        if not dropped:
            engine.step()
        state.step += 1
        state.tokens += curriculum.tokens_per_step
        loss_tokens_seen += global_tokens
        state.loader_state = loader.state_dict()
        samples.record(state.step, plan.index, step_keys)

        # ------------------------------------------------------------ log
        totals = _step_totals(loss_sum, dropped or not engine.was_step_applied(), loader, parallel)
        train_loss = totals["loss_sum"] / global_tokens
        skipped = _skip_verdict(totals, parallel, state.step)
        bad_steps.update(skipped)
        state.bad_steps_in_a_row = bad_steps.in_a_row
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        record = {"loss": _finite_or_none(train_loss), "lr": lr, "tokens": state.tokens, "stage": plan.index,
                  "context_len": plan.context_len, "loss_tokens": global_tokens,
                  "grad_norm": _finite_or_none(grad_norm),
                  "data_skipped_samples": totals["skipped_samples"],
                  "data_checksum_mismatches": totals["checksum_mismatches"]}
        if skipped:
            record.update(skipped=SKIPPED_REASON, bad_steps_in_a_row=bad_steps.in_a_row)
            if parallel.rank == 0:
                bar.write(bad_steps.describe(state.step, train_loss))
        at_log_step = state.step % cfg.train.log_every == 0 or state.step == last_step
        if at_log_step:
            record.update(metrics.throughput(state.tokens, loss_tokens_seen))
        metrics.log("train", state.step, record, to_tensorboard=at_log_step)
        bar.update(1)
        if at_log_step and not skipped:
            bar.set_postfix(stage=plan.index, ctx=plan.context_len, loss=f"{train_loss:.4f}", lr=f"{lr:.2e}",
                            tok_s=f"{record.get('tokens_per_s', 0):.0f}",
                            loss_tok_s=f"{record.get('loss_tokens_per_s', 0):.0f}")

        # ------------------------------------------------------------ stop, validate, checkpoint
        if bad_steps.exhausted:
            break
        stopped = bool(ranks_with(preemption.stop_requested()))   # one asks = all stop and checkpoint together
        done = state.step == last_step
        if not stopped and (done or (cfg.train.eval_every and state.step % cfg.train.eval_every == 0)):
            state.last_val_loss = validation_loss(engine, cfg, plan, parallel, cfg.train.eval_batches, cp_group)
            metrics.log("val", state.step, {"loss": state.last_val_loss, "tokens": state.tokens,
                                            "stage": plan.index})
            if parallel.rank == 0 and cfg.train.progress:
                bar.write(f"step {state.step}: validation loss {state.last_val_loss:.4f} "
                          f"(stage {plan.index}, context {plan.context_len})")
        if not stopped and evaluator.due(state.step, done):
            metrics.log("eval", state.step, evaluator.run(engine, state.step, plan.index))
            if parallel.rank == 0 and cfg.train.progress:
                bar.write(f"step {state.step}: evaluation written to {run_dir / 'eval'}")
        every = cfg.train.checkpoint_every
        checkpoint_due = checkpoint_due or bool(every and state.step % every == 0)
        if stopped or done or (checkpoint_due and not skipped):
            checkpoint_due = False
            checkpoints.save(engine, state, {"step": state.step, "tokens": state.tokens, "stage": plan.index,
                                             "config_hash": state.config_hash, "world_size": parallel.world_size,
                                             "last_val_loss": state.last_val_loss})
        if stopped:
            break

    bar.close()
    metrics.close()
    preemption.restore_signal_handlers(signal_handlers)
    preemption.clear_stop()
    latest_tag = read_latest_tag(checkpoints.root)
    latest = checkpoints.root / latest_tag if latest_tag else None
    if bad_steps.exhausted:
        raise bad_steps.stop_error(state.step, latest, metrics.path)
    return TrainingResult("preempted" if stopped else "completed", state.step, state.tokens, state.stage,
                          state.last_val_loss, run_dir, latest)


def check_vocabulary(cfg) -> None:
    """The shards' tokenizer must fit the model's embedding (else an IndexError deep in a step)."""
    from data_pipeline.manifest import read_manifest
    from data_pipeline.tokenizers import load_tokenizer
    from pretrain.errors import ConfigError

    vocab = load_tokenizer(read_manifest(Path(cfg.data.shards))["tokenizer"]).num_used_ids
    if cfg.model.vocab_size < vocab:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the ids the "
                          f"tokenizer in {cfg.data.shards}/manifest.json produces ({vocab}); set "
                          f"model.vocab_size={vocab}")


def _step_totals(loss_sum, skipped: bool, loader, parallel) -> dict:
    """One all-reduce per step over the data x context ranks: summed loss, how many ranks
    skipped the update, and the loader's skipped-data counters (CP ranks share one loader
    stream, so those sums are divided by the CP size)."""
    import torch
    import torch.distributed as dist

    from pretrain.parallel import collective_device

    values = torch.tensor([float(loss_sum), 1.0 if skipped else 0.0,
                           float(getattr(loader, "skipped_samples", 0)),
                           float(getattr(loader, "checksum_mismatches", 0))], dtype=torch.float64)
    if parallel.world_size > 1:
        values = values.to(collective_device(parallel.dp_cp_group))
        dist.all_reduce(values, group=parallel.dp_cp_group)
    loss, skipped_ranks, skipped_samples, mismatches = values.tolist()
    return {"loss_sum": loss, "skipped_ranks": int(skipped_ranks),
            "skipped_samples": int(skipped_samples) // parallel.cp_size,
            "checksum_mismatches": int(mismatches) // parallel.cp_size}


def _skip_verdict(totals: dict, parallel, step: int) -> bool:
    """Whether this step's update was skipped; the same on every rank by construction (a
    non-finite loss poisons the gradients, and the overflow check uses the all-reduced
    gradient norm). A split verdict or a non-finite loss that was applied would mean diverged
    replicas or corrupted weights, so it stops the run rather than continuing silently."""
    skipped_ranks = totals["skipped_ranks"]
    group_size = parallel.dp_size * parallel.cp_size
    if 0 < skipped_ranks < group_size:
        raise RuntimeError(f"step {step}: {skipped_ranks} of {group_size} ranks skipped the update and the "
                           "others applied it; the replicas would diverge")
    if not skipped_ranks and not math.isfinite(totals["loss_sum"]):
        raise RuntimeError(f"step {step}: the loss is not finite but DeepSpeed applied the update; the weights "
                           "are not trustworthy (resume from the last checkpoint)")
    return skipped_ranks > 0


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    """JSON has no NaN/inf: a skipped step's loss or norm is written as null."""
    return value if value is not None and math.isfinite(value) else None


def main(argv: Optional[list] = None) -> int:
    """Entry of `bioxlstm train` and of launcher workers; reads RANK/WORLD_SIZE/... when set."""
    from pretrain.train_arguments import add_train_arguments

    parser = argparse.ArgumentParser(prog="bioxlstm train", description=add_train_arguments.__doc__)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def run_from_args(args) -> int:
    from pretrain.config import load_run_config

    cfg = load_run_config(args.config, list(args.overrides))
    result = run_training(cfg, fork_from=args.from_checkpoint, fork_stage=args.stage)
    return result.exit_code


if __name__ == "__main__":
    import sys

    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - user-facing errors are one line
        if getattr(error, "user_facing", False):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise
