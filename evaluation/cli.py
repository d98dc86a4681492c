"""`bioxlstm eval`: the paper's evaluations on an export directory (standard library imports only
at module top, so `bioxlstm --help` stays fast)."""
from __future__ import annotations

import argparse
import sys

SUITE_HELP = """suites (several may be given; `auto` = every suite of the model's modality):
  protein-icl          perplexity of the k-th homolog given k-1 before it (the ICL curve), first /
                       second / last member, FIM span perplexity and accuracy, last member per
                       context length. --data: family files (.fasta/.a3m/.sto) or a protein build
  protein-generation   homology-conditioned samples: Hamming to the family, HMMER bit score
                       (alignment families), perplexity, KS against natural members
  chem-unconditional   validity, uniqueness, novelty, FCD, scaffolds, fingerprints, SA score.
                       --data: reference SMILES (file) or a molecules build (validation split)
  chem-domains         per held-out domain, k molecules in context: FCD and novelty against the
                       domain. --data: ICST lines, smiles,domain CSV or a molecules build
  dna-lm               CLM / MLM loss, perplexity and accuracy, RC consistency, post-hoc
                       conjoined score. --data: a DNA build (validation split) or a FASTA
                       (with --option bed=FILE: its intervals of split bed_split, default test)

--quick uses the small sizes (what training and the demo run); --option NAME=VALUE sets one
suite size (e.g. num_samples=512, max_families=50, ks=[0,1,8]).
Output: OUT/eval.json (every figure with n and 95% interval, model, data, seed, versions),
OUT/eval.md and PNG plots. An OUT that holds an evaluation is kept unless --overwrite."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate an exported model with the paper's measures",
        description="Evaluate an export directory (bioxlstm export / convert) with the Bio-xLSTM "
                    "paper's measures.", epilog=SUITE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="export directory (model.safetensors, config.json, tokenizer.json)")
    parser.add_argument("suites", nargs="+", metavar="SUITE", help="suite names (see below) or `auto`")
    parser.add_argument("--data", help="evaluation data: a shard build (its validation split) or a data file/folder")
    parser.add_argument("--out", required=True, help="output directory for eval.json, eval.md and plots")
    parser.add_argument("--quick", action="store_true", help="small sizes (minutes on a CPU)")
    parser.add_argument("--seed", type=int, default=42, help="seed of shuffles, FIM spans and sampling (default 42)")
    parser.add_argument("--context-len", type=int, help="longest context an item is laid out in")
    parser.add_argument("--context-lens", help="protein-icl: comma-separated context lengths for the last-member "
                        "perplexity (default: the curriculum in the export's training.json)")
    parser.add_argument("--novelty-reference", help="chem: SMILES file novelty is measured against "
                        "(default: the train split of --train-data or of --data when it is a build)")
    parser.add_argument("--train-data", help="chem: the molecules build the model trained on (novelty default)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a suite size, e.g. num_samples=512 (repeatable)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples stepped together (default 64)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an evaluation already in --out")
    parser.set_defaults(handler=run_eval)


def parse_options(items) -> dict:
    """NAME=VALUE pairs, values read as YAML scalars / lists (512, 0.9, [0,1,8], true)."""
    import yaml

    from evaluation.errors import EvaluationError

    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise EvaluationError(f"--option {item!r}: write NAME=VALUE, e.g. num_samples=512")
        options[name.strip()] = yaml.safe_load(value)
    return options


def run_eval(args) -> int:
    from pathlib import Path

    from evaluation.base import EvalRequest
    from evaluation.errors import EvaluationError
    from evaluation.session import evaluate_export

    out = Path(args.out)
    try:
        context_lens = tuple(int(x) for x in args.context_lens.split(",") if x.strip()) if args.context_lens else ()
    except ValueError:
        raise EvaluationError(f"--context-lens {args.context_lens!r}: give integers, e.g. 2048,4096") from None
    request = EvalRequest(data=args.data, quick=args.quick, seed=args.seed, context_len=args.context_len,
                          context_lens=context_lens, novelty_reference=args.novelty_reference,
                          train_data=args.train_data, options=parse_options(args.option),
                          batch_size=args.batch_size)
    results = evaluate_export(args.model_dir, args.suites, request, out, device=args.device,
                              overwrite=args.overwrite, log=lambda line: print(line, file=sys.stderr))
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")
    for result in results:
        for plot in result.plots:
            print(f"plot: {plot}")
    return 0
