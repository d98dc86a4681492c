"""`bioxlstm demo`: the whole pipeline on bundled real data, CPU only, in minutes.

Per modality: build shards from the bundled data (data_pipeline.demo), train the tiny model of
configs/demo_<modality>.yaml through the same trainer as `bioxlstm train` (DeepSpeed on CPU,
2-stage context curriculum), then compare the final validation loss with the unigram baseline
(token frequencies only), and end with the paper's measures in their quick sizes (each demo
config's `eval` section: in-training evaluation, report and plots in RUN/eval/). Running the
demo again on the same --out resumes or reuses the runs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from pretrain.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODALITIES = ("dna", "protein", "molecules")


def demo_config_path(modality: str) -> Path:
    return CONFIG_DIR / f"demo_{modality}.yaml"


def demo_overrides(modality: str, out: Path, steps: Optional[int]) -> list[str]:
    """Point the demo config at the demo's shards and run dir; spread `steps` over the 2 stages."""
    overrides = [f"data.shards={out / modality / 'shards'}", f"train.out_dir={out / modality / 'run'}"]
    if steps is not None:
        from pretrain.config import load_run_config

        if steps < 2:
            raise ConfigError(f"--steps {steps}: give at least 2 (one per curriculum stage)")
        stages = load_run_config(demo_config_path(modality), overrides).curriculum.stages
        first = stages[0]
        tokens_per_step = first.context_len * first.micro_batch_size * (first.grad_accum or 1)
        share = [steps // len(stages)] * len(stages)
        share[-1] += steps - sum(share)
        overrides += [f"curriculum.stages.{i}.tokens={n * tokens_per_step}" for i, n in enumerate(share)]
        overrides += [f"train.eval_every={max(1, steps // 4)}", f"train.checkpoint_every={max(1, steps // 2)}",
                      f"train.warmup_tokens={max(1, steps // 10) * tokens_per_step}"]
    return overrides


def run_modality(modality: str, out: Path, steps: Optional[int]) -> dict:
    from data_pipeline.demo import build_demo_shards
    from data_pipeline.unigram import unigram_cross_entropy
    from pretrain.config import load_run_config
    from pretrain.train import run_training

    shards = out / modality / "shards"
    if not (shards / "manifest.json").is_file():
        print(f"[{modality}] building shards from the bundled data into {shards}", flush=True)
        build_demo_shards(shards, modality, progress=True)
    cfg = load_run_config(demo_config_path(modality), demo_overrides(modality, out, steps))
    print(f"[{modality}] training {cfg.model.num_blocks} blocks x d_model {cfg.model.d_model}, stages "
          + " -> ".join(f"{s.context_len}x{s.micro_batch_size}" for s in cfg.curriculum.stages), flush=True)
    result = run_training(cfg)
    context_len = cfg.curriculum.stages[-1].context_len
    baseline = unigram_cross_entropy(cfg.data, context_len)
    val = result.val_loss if result.val_loss is not None else math.nan
    return {"modality": modality, "steps": result.step, "tokens": result.tokens, "val_loss": val,
            "unigram": baseline, "beats": val < baseline, "status": result.status, "run_dir": result.run_dir}


HEADLINE_FIGURES = {
    "protein": ("protein-icl/first_perplexity", "protein-icl/last_perplexity", "protein-icl/fim_perplexity",
                "protein-generation/T1_k10_p1/valid_share", "protein-generation/T1_k10_p1/mean_min_hamming"),
    "molecules": ("chem-unconditional/validity", "chem-unconditional/uniqueness", "chem-unconditional/fcd",
                  "chem-domains/fcd_k0", "chem-domains/fcd_k8"),
    "dna": ("dna-lm/loss", "dna-lm/perplexity", "dna-lm/accuracy"),
}


def evaluation_summary(rows: Sequence[dict]) -> str:
    """The final in-training evaluation of each demo model (RUN/eval/): headline figures and
    where the report and its plots are."""
    import json

    lines = ["The paper's measures on the demo models (quick sizes, final step):"]
    for row in rows:
        report_path = Path(row["run_dir"]) / "eval" / "eval.json"
        if not report_path.is_file():
            lines.append(f"  {row['modality']}: no evaluation in {report_path.parent}")
            continue
        figures = json.loads(report_path.read_text())["figures"]
        shown = [f"{name} {figures[name]:.3f}" for name in HEADLINE_FIGURES[row["modality"]] if name in figures]
        lines.append(f"  {row['modality']:<10} " + ", ".join(shown))
        plots = sorted(p.name for p in report_path.parent.glob("*.png"))
        lines.append(f"             report {report_path.parent / 'eval.md'}"
                     + (f"; plots {', '.join(plots)}" if plots else ""))
    return "\n".join(lines)


def format_table(rows: Sequence[dict]) -> str:
    lines = ["modality    steps   tokens     val loss  unigram   result",
             "---------   -----   --------   --------  -------   ------"]
    for r in rows:
        verdict = "below unigram" if r["beats"] else "NOT below unigram"
        lines.append(f"{r['modality']:<10}  {r['steps']:>5}   {r['tokens']:>8}   {r['val_loss']:8.4f}  "
                     f"{r['unigram']:7.4f}   {verdict}")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", modalities: Sequence[str] = MODALITIES,
             steps: Optional[int] = None) -> int:
    """Returns 0 when every modality's validation loss ends below its unigram baseline, else 1."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ConfigError(f"--modalities {','.join(modalities)}: choose from {','.join(MODALITIES)}")
    out = Path(out)
    rows = []
    for modality in modalities:
        rows.append(run_modality(modality, out, steps))
        if rows[-1]["status"] != "completed":
            print(f"[{modality}] stopped before the end (preempted); run the demo again to continue", flush=True)
            return 75
    print("\nValidation loss (nats/token) after training vs. the unigram baseline:\n" + format_table(rows), flush=True)
    print(f"\nRuns, checkpoints and TensorBoard logs: {out}/<modality>/run "
          f"(tensorboard --logdir {out})", flush=True)
    print("\n" + evaluation_summary(rows), flush=True)
    return 0 if all(r["beats"] for r in rows) else 1
