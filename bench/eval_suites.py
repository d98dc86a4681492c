"""CPU cost of the evaluation suites on the demo models, and the share of a demo training run
that in-training evaluation takes at the demo configs' interval.

    bioxlstm demo --out runs/demo                  # first: trains the three demo models
    python bench/eval_suites.py --demo-out runs/demo

Per modality: the run's latest checkpoint is exported to a temporary directory, then each of
the modality's suites runs once through `bioxlstm eval`'s own code (evaluation.session.evaluate_export)
with the request the run's final in-training evaluation used; wall
and CPU seconds are measured around it. The in-training share is read from the run's
metrics.jsonl: `eval_share` of the last evaluation = evaluation seconds / the run's wall seconds.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evaluation.session import evaluate_export  # noqa: E402
from pretrain.config import load_run_config  # noqa: E402
from pretrain.export import export_checkpoint, read_training_checkpoint  # noqa: E402
from pretrain.in_training_eval import eval_request  # noqa: E402
from pretrain.metrics import read_metrics  # noqa: E402


def time_suite(export_dir: Path, suite: str, cfg, out: Path) -> tuple:
    request = eval_request(cfg, len(cfg.curriculum.stages) - 1)     # what the final in-training evaluation ran
    wall, cpu = time.perf_counter(), time.process_time()
    evaluate_export(export_dir, [suite], request, out / suite, overwrite=True)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-out", default="runs/demo", help="the `bioxlstm demo --out` directory")
    parser.add_argument("--modalities", default="protein,molecules,dna")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print("| modality | suite | wall s | CPU s |\n|---|---|---|---|")
    shares = []
    for modality in args.modalities.split(","):
        run = Path(args.demo_out) / modality / "run"
        cfg = load_run_config(run / "config.yaml")
        with tempfile.TemporaryDirectory() as tmp:
            export_dir = export_checkpoint(read_training_checkpoint(run), Path(tmp) / "export")
            for suite in cfg.eval.suites:
                wall, cpu = time_suite(export_dir, suite, cfg, Path(tmp) / "eval")
                print(f"| {modality} | {suite} | {wall:.1f} | {cpu:.1f} |", flush=True)
        evals = read_metrics(run, "eval")
        if evals:
            shares.append((modality, len(evals), sum(r["eval_seconds"] for r in evals), evals[-1]["eval_share"]))
    print("\n| modality | evaluations | eval s | share of the run's wall time |\n|---|---|---|---|")
    for modality, count, seconds, share in shares:
        print(f"| {modality} | {count} | {seconds:.1f} | {share:.1%} |")


if __name__ == "__main__":
    main()
