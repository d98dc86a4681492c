"""What the training-step bench reports: run metadata, the Markdown table, the comparisons the
benchmark issue asks for, and files written whole.

Kept apart from the measuring, so the formatting and the comparisons can be read and tested on
rows written by hand, without building an engine.
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

from bench.step_models import REPO


def row_summary(row: dict) -> str:
    """One line per context for the log."""
    if row["status"] != "ok":
        return row["status"]
    memory = f", peak {row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] is not None else ""
    return (f"{row['step_ms']:.1f} ms/step, {row['tokens_per_s']:,.0f} tokens/s, {row['model_tflops']:.2f} TFLOP/s, "
            f"MFU {100 * row['mfu']:.1f}%{memory}")


def environment(device, ceiling: dict, args) -> dict:
    """Where, with what and how the numbers were measured (the JSON's meta)."""
    import deepspeed
    import torch

    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
                torch=torch.__version__, cuda=torch.version.cuda, deepspeed=deepspeed.__version__,
                python=platform.python_version(), git_commit=_git_commit(),
                dtype="bf16" if device.type == "cuda" else "fp32", zero_stage=args.zero_stage,
                tokens_per_step=args.tokens_per_step, steps=args.steps, warmup=args.warmup,
                host_path="trainer" if args.trainer_host_path else "device", document_len=args.document_len,
                matmul_ceiling_tflops=ceiling["tflops"], matmul_ceiling_size=ceiling["size"],
                matmul_ceiling_dtype=ceiling["dtype"],
                datasheet_tflops=args.datasheet_tflops if device.type == "cuda" else None)
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    if device.type == "cuda":
        meta["device_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    return meta


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    lines = ["| model | params | context | micro-batch x accum | step ms | tokens/s | model TFLOP/s | "
             "MFU (measured) | MFU (datasheet) | peak GiB | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['context_len']} | {r['micro_batch']} x {r['grad_accum']} "
            f"| {_fmt(r['step_ms'], '.1f')} | {_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r['model_tflops'], '.2f')} "
            f"| {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] is not None else ''} "
            f"| {_fmt(r['mfu_datasheet'] and 100 * r['mfu_datasheet'], '.1f')}{'%' if r['mfu_datasheet'] is not None else ''} "
            f"| {_fmt(r['peak_memory_gib'], '.2f')} | {r['status']} |")
    return "\n".join(lines)


def comparisons(rows: list[dict], specs: dict) -> list[str]:
    """The issue's target quantities, for every xLSTM model (targets quoted for H100, 102M, bf16):
    MFU up to 2^15, tokens/s at the longest vs the shortest context, speedup over the matched
    baseline per context, and how peak memory grows with the context at micro-batch 1."""
    ok = {(r["model"], r["context_len"]): r for r in rows if r["status"] == "ok"}
    lines = []
    for name, spec in specs.items():
        if spec.family != "xlstm":
            continue
        measured = sorted(c for (m, c) in ok if m == name)
        short = [c for c in measured if c <= 2 ** 15]
        if short and ok[(name, short[0])]["mfu"] is not None:
            mfus = ", ".join(f"{c}: {100 * ok[(name, c)]['mfu']:.1f}%" for c in short)
            lines.append(f"- {name}: MFU (measured ceiling) {mfus} (target >= 40% at 2^11..2^15)")
        if len(measured) >= 2:
            first, last = ok[(name, measured[0])], ok[(name, measured[-1])]
            lines.append(f"- {name}: tokens/s at context {last['context_len']} / at {first['context_len']} = "
                         f"{last['tokens_per_s'] / first['tokens_per_s']:.2f} (target at 2^17 / 2^11: >= 0.77, "
                         f"i.e. within 1.3x)")
        for other, other_spec in specs.items():
            if other_spec.matched_to != name:
                continue
            parts = [f"{c}: {ok[(name, c)]['tokens_per_s'] / ok[(other, c)]['tokens_per_s']:.2f}x"
                     for c in measured if (other, c) in ok]
            if parts:
                lines.append(f"- {name} vs {other}, tokens/s ratio by context: " + ", ".join(parts)
                             + " (target > 1 from 2^13, > 5 at 2^17)")
        single = [c for c in measured if ok[(name, c)]["micro_batch"] == 1 and ok[(name, c)]["peak_memory_gib"]]
        if single:
            parts, previous = [], None
            for c in single:
                row = ok[(name, c)]
                above = row["peak_memory_gib"] - (row["static_memory_gib"] or 0.0)
                growth = f", x{above / previous:.2f}" if previous else ""
                parts.append(f"{c}: {row['peak_memory_gib']:.1f} GiB ({above:.1f} above static{growth})")
                previous = above
            lines.append(f"- {name}: peak memory at micro-batch 1: " + "; ".join(parts)
                         + " (linear in S: x2 per doubling)")
    return lines


def format_markdown(meta: dict, rows: list[dict], specs: dict, profiles: dict) -> str:
    lines = ["# Training step benchmark", "",
             f"{meta['date']} on {meta['device']}; torch {meta['torch']} (CUDA {meta['cuda']}), triton "
             f"{meta['triton']}, deepspeed {meta['deepspeed']}, commit {meta['git_commit']}.",
             f"{meta['dtype']}, ZeRO {meta['zero_stage']}, {meta['tokens_per_step']} tokens per step held "
             f"constant (at least one sequence), median of {meta['steps']} steps after {meta['warmup']} warm-up; "
             + ("batches copied from the host, loss and grad norm read once per step as pretrain/train.py does."
                if meta["host_path"] == "trainer" else "batches already on the device, no host sync inside a step.")
             + (f" xLSTM rows packed with documents of {meta['document_len']} tokens (state resets)."
                if meta.get("document_len") else " xLSTM rows hold one document each."),
             f"Matmul ceiling measured here: {meta['matmul_ceiling_tflops']:.1f} TFLOP/s ({meta['matmul_ceiling_dtype']} "
             f"{meta['matmul_ceiling_size']}^2)" + (f"; datasheet {meta['datasheet_tflops']:.0f} TFLOP/s."
                                                   if meta["datasheet_tflops"] else "."), ""]
    for spec in specs.values():
        matched = f", matched to {spec.matched_to}" if spec.matched_to else ""
        lines.append(f"- {spec.name}: {spec.description}, {spec.params:,} parameters{matched}, activation "
                     f"checkpointing {'on' if spec.activation_checkpointing else 'off'}")
    lines += ["", format_table(rows), ""]
    summary = comparisons(rows, specs)
    if summary:
        lines += ["Comparisons:", ""] + summary + [""]
    if profiles:
        lines += ["### Profiles", "", "Batches are synthetic and already on the device: data loading costs "
                  "nothing here (see bench/data_pipeline.py).", ""]
        for profile in profiles.values():
            lines += [profile["markdown"], ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Temp file, then rename: a run cut short leaves the previous file or a whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
