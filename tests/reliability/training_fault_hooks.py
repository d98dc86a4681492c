"""Faults injected into real trainer processes (imported by the trainer child, never by pytest).

`install(faults)` patches the trainer's own seams before `pretrain.train` runs: the model built
by `modeling.build_model` gets a forward hook, the engine built by `pretrain.engine.build_engine`
gets a probe around `step`, the checkpoint writer gets a wrapper. Nothing in DeepSpeed is mocked:
the faults are real NaNs in real tensors, real signals, a real file-size limit on real writes.

Steps are counted by the calls of `pretrain.engine.set_learning_rate` (once per optimizer step,
before its first forward), so step k is the k-th step of this process: use faults in fresh runs.

faults (dict, JSON-able; every key optional):
    nonfinite: [{"kind": "loss_nan" | "loss_inf" | "grad_nan", "steps": [..], "ranks": [..]}]
        loss_nan  logits x NaN (loss and gradients NaN)
        loss_inf  logits of the lower half of the vocabulary set to -inf: the loss is inf but its
                  gradient (softmax - onehot) is finite, the case DeepSpeed's norm check alone misses
        grad_nan  logits unchanged, their gradient x NaN in backward (finite loss, NaN gradients)
    signal_mid_step: {"rank": r, "step": k, "signal": "SIGKILL" | "SIGSTOP"}  after the first
        micro-batch's forward of step k (before its backward)
    sigterm_in_save: {"step": k}  every rank sends itself SIGTERM while writing step k's files
    write_limit: {"ranks": [..], "step": k, "bytes": n}  while step k's checkpoint files are written,
        writes past n bytes of any file fail in the kernel (RLIMIT_FSIZE, SIGXFSZ ignored), as on
        a full disk; stdout/stderr go to /dev/null meanwhile so the rank's log is not cut
    probe_dir: path  per rank, `probe_rank<r>.jsonl`, one record per step: {"step", "before",
        "after", "engine_step", "applied"}: sha256 of this rank's weights and optimizer state
        (moments, step counts, fp32 master partition) when the step starts and when its metrics
        are logged, whether `engine.step()` ran and applied an update; `pid_rank<r>` with the
        process id
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
from pathlib import Path

import torch

RANK = int(os.environ.get("RANK", "0"))
_position = {"step": 0, "micro": 0}


def install_from_env(variable: str = "BIOXLSTM_TEST_FAULTS") -> None:
    install(json.loads(os.environ.get(variable) or "{}"))


def install(faults: dict) -> None:
    import modeling
    import pretrain.checkpoint
    import pretrain.engine

    real_set_lr = pretrain.engine.set_learning_rate

    def counting_set_lr(engine, lr):
        _position["step"] += 1
        _position["micro"] = 0
        real_set_lr(engine, lr)

    pretrain.engine.set_learning_rate = counting_set_lr

    real_build_model = modeling.build_model

    def build_model_with_faults(cfg):
        model = real_build_model(cfg)
        model.register_forward_hook(_forward_fault(faults))
        return model

    modeling.build_model = build_model_with_faults

    if faults.get("probe_dir"):
        _install_probe(Path(faults["probe_dir"]))

    if faults.get("sigterm_in_save") or faults.get("write_limit"):
        manager = pretrain.checkpoint.CheckpointManager
        real_write = manager._write_rank_files

        def write_with_faults(self, engine, train_state, directory):
            sigterm = faults.get("sigterm_in_save") or {}
            if train_state.step == sigterm.get("step"):
                os.kill(os.getpid(), signal.SIGTERM)      # the trainer's handler only sets a flag
            limit = faults.get("write_limit") or {}
            if train_state.step == limit.get("step") and RANK in limit.get("ranks", []):
                with _file_size_limit(limit["bytes"]):
                    return real_write(self, engine, train_state, directory)
            return real_write(self, engine, train_state, directory)

        manager._write_rank_files = write_with_faults


def _forward_fault(faults: dict):
    def hook(module, inputs, output):
        if not module.training:
            return output                                 # validation passes are left alone
        step, micro = _position["step"], _position["micro"]
        _position["micro"] += 1
        stop = faults.get("signal_mid_step") or {}
        if stop and RANK == stop["rank"] and step == stop["step"] and micro == 0:
            os.kill(os.getpid(), getattr(signal, stop["signal"]))
        for fault in faults.get("nonfinite", []):
            if step in fault["steps"] and RANK in fault["ranks"]:
                output = _corrupt(output, fault["kind"])
        return output

    return hook


def _corrupt(logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "loss_nan":
        return logits * float("nan")
    if kind == "loss_inf":
        vocab = logits.shape[-1]
        lower_half = torch.arange(vocab, device=logits.device) < vocab // 2
        return logits + torch.where(lower_half, float("-inf"), 0.0).to(logits.dtype)
    if kind == "grad_nan":
        logits = logits * 1.0                             # a fresh node to hook (the output may be a leaf view)
        logits.register_hook(lambda grad: grad * float("nan"))
        return logits
    raise ValueError(f"unknown fault kind {kind!r}")


class _file_size_limit:
    """Writes beyond `size` bytes fail (EFBIG) until exit; the previous limit is restored."""

    def __init__(self, size: int):
        self.size = size

    def __enter__(self):
        self.previous = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        for stream in ("stdout", "stderr"):
            getattr(__import__("sys"), stream).flush()
        self.saved_fds = [os.dup(1), os.dup(2)]
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.previous[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.previous)
        for fd, saved in zip((1, 2), self.saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        signal.signal(signal.SIGXFSZ, self.previous_handler)
        return False


def _install_probe(probe_dir: Path) -> None:
    """Digest the engine's state when a step starts (`set_learning_rate`) and when its metrics
    are logged (every rank calls `MetricsLogger.log`), and note whether `engine.step()` ran
    and applied an update."""
    import pretrain.engine
    import pretrain.metrics

    probe_dir.mkdir(parents=True, exist_ok=True)
    (probe_dir / f"pid_rank{RANK}").write_text(str(os.getpid()))
    path = probe_dir / f"probe_rank{RANK}.jsonl"
    current: dict = {}
    real_build_engine = pretrain.engine.build_engine
    real_set_lr = pretrain.engine.set_learning_rate
    real_log = pretrain.metrics.MetricsLogger.log

    def build_engine_with_probe(*args, **kwargs):
        engine, ds_config = real_build_engine(*args, **kwargs)
        real_step = engine.step

        def probed_step(*step_args, **step_kwargs):
            result = real_step(*step_args, **step_kwargs)
            current.update(engine_step=True, applied=bool(engine.was_step_applied()))
            return result

        engine.step = probed_step
        current["engine"] = engine
        return engine, ds_config

    def set_lr_with_probe(engine, lr):
        real_set_lr(engine, lr)
        current.update(step=_position["step"], before=state_digests(engine), engine_step=False, applied=False)

    def log_with_probe(self, kind, step, values, to_tensorboard=True):
        real_log(self, kind, step, values, to_tensorboard)
        if kind == "train":
            record = {k: current[k] for k in ("step", "before", "engine_step", "applied")}
            record["after"] = state_digests(current["engine"])
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    pretrain.engine.build_engine = build_engine_with_probe
    pretrain.engine.set_learning_rate = set_lr_with_probe
    pretrain.metrics.MetricsLogger.log = log_with_probe


def state_digests(engine) -> dict:
    """sha256 of this rank's module weights and of its optimizer's tensors (params + state)."""
    weights = hashlib.sha256()
    for param in engine.module.parameters():
        _update(weights, getattr(param, "ds_tensor", param))    # ZeRO-3: the local partition
    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)   # DeepSpeed wraps torch's AdamW
    # the fp32 (master) tensors the optimizer updates: its params, or under ZeRO-3 (which swaps
    # them in per sub-group during step) the partitions its state is keyed by
    masters = [p for group in optimizer.param_groups for p in group["params"]]
    masters += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    masters += list(optimizer.state)
    optimizer_state = hashlib.sha256()
    seen = set()
    for param in masters:
        if id(param) in seen:
            continue
        seen.add(id(param))
        _update(optimizer_state, param)
        for value in optimizer.state.get(param, {}).values():
            if torch.is_tensor(value):
                _update(optimizer_state, value)              # exp_avg, exp_avg_sq, step
    return {"weights": weights.hexdigest(), "optimizer": optimizer_state.hexdigest()}


def _update(digest, tensor: torch.Tensor) -> None:
    digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
