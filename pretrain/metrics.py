"""Training metrics: a JSON-lines record per step, TensorBoard scalars, throughput and MFU.

Rank 0 writes `<run>/metrics.jsonl` (one line per optimizer step and per validation pass) and
TensorBoard event files under `<run>/tensorboard/`. On resume the lines after the resumed step
are dropped first, so the file always reads as one run without repeats.
With `train.record_samples`, every rank also writes `samples_rank<r>.jsonl`: the keys of the
samples it trained on at each step (a data audit: nothing seen twice, nothing skipped).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

METRICS_NAME = "metrics.jsonl"
H100_BF16_PEAK_TFLOPS = 989.0


def truncate_after_step(path: Path, step: int) -> None:
    """Drop records of steps later than `step` (they belong to work lost in a crash)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def read_metrics(run_dir: str | Path, kind: str = "train") -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == kind]


class SampleRecorder:
    """Per-rank sample keys per step (enabled by train.record_samples)."""

    def __init__(self, run_dir: Path, rank: int, enabled: bool, resume_step: int):
        self.path = Path(run_dir) / f"samples_rank{rank:05d}.jsonl" if enabled else None
        if self.path is not None:
            truncate_after_step(self.path, resume_step)

    def record(self, step: int, stage: int, keys: list) -> None:
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": step, "stage": stage, "keys": keys}) + "\n")


class MetricsLogger:
    def __init__(self, run_dir: Path, rank: int, use_tensorboard: bool, resume_step: int,
                 flops_per_token: Optional[float], peak_tflops: Optional[float], world_size: int):
        self.rank = rank
        self.path = Path(run_dir) / METRICS_NAME
        self.world_size = world_size
        self.flops_per_token = flops_per_token
        if peak_tflops is None and torch.cuda.is_available():
            peak_tflops = H100_BF16_PEAK_TFLOPS
        self.peak_tflops = peak_tflops
        self.writer = None
        self._last_time = time.perf_counter()
        self._last_tokens: Optional[int] = None
        self._last_loss_tokens = 0
        if rank == 0:
            truncate_after_step(self.path, resume_step)
            if use_tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def set_flops_per_token(self, value: Optional[float]) -> None:
        self.flops_per_token = value

    def throughput(self, tokens: int, loss_tokens: int = 0) -> dict:
        """tokens/s since the previous call, loss-bearing tokens/s (padding and the last token of
        each document carry no loss: packing is what keeps the two close), TFLOP/s per device
        and MFU (where a peak is known). `tokens` and `loss_tokens` are running totals."""
        now = time.perf_counter()
        out = {}
        if self._last_tokens is not None and now > self._last_time:
            tokens_per_s = (tokens - self._last_tokens) / (now - self._last_time)
            out["tokens_per_s"] = tokens_per_s
            out["loss_tokens_per_s"] = (loss_tokens - self._last_loss_tokens) / (now - self._last_time)
            if self.flops_per_token:
                tflops = self.flops_per_token * tokens_per_s / 1e12 / self.world_size
                out["tflops_per_device"] = tflops
                if self.peak_tflops:
                    out["mfu"] = tflops / self.peak_tflops
        self._last_time, self._last_tokens, self._last_loss_tokens = now, tokens, loss_tokens
        return out

    def log(self, kind: str, step: int, values: dict, to_tensorboard: bool = True) -> None:
        if self.rank != 0:
            return
        record = {"kind": kind, "step": step, **values}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None and to_tensorboard:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{name}", value, step)
            if kind == "train" and "loss" in values:
                self.writer.add_scalar("train/perplexity", math.exp(min(values["loss"], 50.0)), step)
            if kind == "val" and "loss" in values:
                self.writer.add_scalar("val/perplexity", math.exp(min(values["loss"], 50.0)), step)
            if torch.cuda.is_available():
                self.writer.add_scalar("system/gpu_max_memory_gib", torch.cuda.max_memory_allocated() / 2**30, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
