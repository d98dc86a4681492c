"""`bioxlstm export | convert | score | embed | generate | infill`: export a checkpoint (also
to the papers' official layouts), convert the papers' released checkpoints, use an export.

Only the standard library is imported at module top (docs/INTERFACES.md); torch, safetensors
and the model load inside the handlers. The inference subcommands read FASTA (DNA, protein) or
SMILES files (one molecule per line, first column) and write FASTA, CSV or NPY.
"""
from __future__ import annotations

import argparse
import csv
import sys
import textwrap
from pathlib import Path

SAMPLING_HELP = {
    "temperature": "softmax temperature; 0 = greedy (default 1.0)",
    "top_k": "sample only among the K most likely tokens (default: all)",
    "top_p": "nucleus sampling: the smallest token set with probability >= P (default: off)",
    "seed": "random seed; the same seed gives the same output (default 0)",
}


OFFICIAL_FORMATS = ("protxlstm", "dnaxlstm", "chemxlstm")
FORMATS_HELP = """official formats (the Bio-xLSTM papers' code, ml-jku):
  protxlstm  Prot-xLSTM: a directory with config.json (asdict of xLSTMLMModelConfig) and
             pytorch_model.bin (or model.safetensors); tensors prefixed backbone.
  dnaxlstm   DNA-xLSTM: a PyTorch Lightning .ckpt, weights in state_dict prefixed
             model.backbone., model config in hyper_parameters.model.config (an omegaconf
             DictConfig in training checkpoints) and/or a model_config.json beside it (the
             file the official downstream scripts read); the two must agree
  chemxlstm  Chem-xLSTM: a directory with model.pt (state dict prefixed model.) and
             init_arguments.json (sizes and the data-built vocabulary token2label)
Official files are pickles: weights files are loaded with torch.load(weights_only=True) only,
DNA-xLSTM training checkpoints with an allow-listing unpickler that reads omegaconf configs as
plain data; any other Python object in a file is refused by name and nothing in it runs.
Official config values this project does not implement exactly are refused by name."""


def register(subparsers) -> None:
    _register_export(subparsers)
    _register_convert(subparsers)
    _register_score(subparsers)
    _register_embed(subparsers)
    _register_generate(subparsers)
    _register_infill(subparsers)


# ---- export -------------------------------------------------------------------------------------

def _register_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a training checkpoint to model.safetensors + config + tokenizer + card, "
                       "or to a paper's official layout (--format)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Consolidate a DeepSpeed training checkpoint (any ZeRO stage, world size and "
            "context-parallel size; no GPU needed) into a directory that loads with "
            "torch + safetensors + modeling only. With --format protxlstm|dnaxlstm|chemxlstm "
            "write the official layout instead, so the paper's own evaluation code loads the "
            "model; the source may then also be an export directory. A model the official "
            "code cannot express exactly is refused, naming the field.", 92) + "\n\n" + FORMATS_HELP,
        epilog="examples:\n"
               "  bioxlstm export runs/p26 exports/prot-26m\n"
               "  bioxlstm export runs/p26 official/prot-26m --format protxlstm\n"
               "  bioxlstm export exports/dna-2m official/dna-2m --format dnaxlstm   "
               "# -> official/dna-2m/checkpoints/last.ckpt")
    parser.add_argument("checkpoint", metavar="CKPT_DIR",
                        help="a run directory (its `latest` checkpoint is used), one checkpoint "
                             "directory RUN/checkpoints/<tag>, or (with --format) an export directory")
    parser.add_argument("out", metavar="OUT_DIR", help="directory to create for the export")
    parser.add_argument("--format", choices=("bioxlstm",) + OFFICIAL_FORMATS, default="bioxlstm",
                        help="bioxlstm (default): this project's export; or an official layout (see above)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="dtype of the saved weights (default fp32; bf16 halves the size); "
                             "--format keeps the weights' own dtype")
    parser.add_argument("--context-length", type=int, default=None, metavar="N",
                        help="with --format: the context length recorded in the official config "
                             "(default 2048 protein / molecules, 1024 DNA; it does not change the model)")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="tokenizer.json to ship when the run's data build (data.shards, which "
                             "holds the tokenizer) is not at hand")
    _add_force(parser)
    parser.set_defaults(handler=_run_export)


def _add_force(parser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace OUT_DIR if it exists and is not empty (the old one is removed "
                             "only after the new one is complete)")


def _run_export(args) -> int:
    if args.format != "bioxlstm":
        from pretrain.official.convert import export_official

        out = export_official(args.checkpoint, args.out, args.format, force=args.force,
                              tokenizer_path=args.tokenizer, context_length=args.context_length)
        print(f"exported {args.checkpoint} -> {out} ({args.format} format)")
        return 0
    from pretrain.export import export_checkpoint, read_training_checkpoint

    source = read_training_checkpoint(args.checkpoint, tokenizer_path=args.tokenizer)
    out = export_checkpoint(source, args.out, dtype=args.dtype, force=args.force)
    print(f"exported {source.checkpoint_dir} -> {out}")
    return 0


# ---- convert ------------------------------------------------------------------------------------

def _register_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint released with a Bio-xLSTM paper into an export directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Read an official checkpoint (Prot-xLSTM, DNA-xLSTM or Chem-xLSTM) and write this "
            "project's export directory (model.safetensors, config.json, tokenizer.json and a "
            "model card naming the source), which `score`, `embed`, `generate` and "
            "modeling.inference.load use. Tensors are copied as stored, bit for bit (norm "
            "weights stay offsets: norm_weight_offset); `bioxlstm export OUT_DIR DIR --format "
            "FORMAT` writes them back.", 92) + "\n\n" + FORMATS_HELP,
        epilog="examples:\n"
               "  bioxlstm convert protxlstm checkpoints/protxlstm_26m exports/prot-26m\n"
               "  bioxlstm convert dnaxlstm outputs/pretrain/hg38/run/checkpoints/last.ckpt exports/dna\n"
               "  bioxlstm convert chemxlstm chem_xlstm_15m/ exports/chem-15m --num-heads 8")
    parser.add_argument("format", choices=OFFICIAL_FORMATS, metavar="FORMAT",
                        help="protxlstm | dnaxlstm | chemxlstm")
    parser.add_argument("src", metavar="SRC", help="the official checkpoint: a directory (protxlstm, "
                                                   "chemxlstm) or a .ckpt file (dnaxlstm)")
    parser.add_argument("out", metavar="OUT_DIR", help="export directory to create")
    parser.add_argument("--num-heads", type=int, default=None, metavar="N",
                        help="chemxlstm only, required: the model's head count (init_arguments.json "
                             "stores 1 whatever it was; 1 for Chem-xLSTM 1.6M, 8 for 15M)")
    parser.add_argument("--model-config", default=None, metavar="JSON",
                        help="dnaxlstm only: the model_config.json to read (default: the one beside "
                             "the .ckpt, if any); checked against hyper_parameters.model.config "
                             "where the .ckpt holds one")
    _add_force(parser)
    parser.set_defaults(handler=_run_convert)


def _run_convert(args) -> int:
    from pretrain.official.convert import convert_official

    out = convert_official(args.format, args.src, args.out, force=args.force, num_heads=args.num_heads,
                           model_config_path=args.model_config)
    print(f"converted {args.format} {args.src} -> {out}")
    return 0


# ---- shared options and readers -----------------------------------------------------------------

def _add_model_dir(parser) -> None:
    parser.add_argument("model", metavar="MODEL_DIR", help="a directory written by `bioxlstm export`")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")


def _add_sampling(parser) -> None:
    parser.add_argument("--temperature", type=float, default=1.0, help=SAMPLING_HELP["temperature"])
    parser.add_argument("--top-k", type=int, default=None, help=SAMPLING_HELP["top_k"])
    parser.add_argument("--top-p", type=float, default=None, help=SAMPLING_HELP["top_p"])
    parser.add_argument("--seed", type=int, default=0, help=SAMPLING_HELP["seed"])


def _load(args):
    from modeling.inference import load

    return load(args.model, device=args.device)


def read_sequences(path: str, modality: str) -> list[tuple[str, str]]:
    """(name, sequence) pairs: FASTA for DNA and protein, one SMILES per line for molecules
    (first whitespace/comma-separated column; a header line 'smiles' is skipped)."""
    from modeling.inference import InferenceError

    if modality != "molecules":
        from data_pipeline.readers import read_fasta

        return [(record.name, record.sequence) for record in read_fasta(path)]
    file = Path(path)
    if not file.is_file():
        raise InferenceError(f"{path}: no such SMILES file")
    records = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if not fields or (number == 1 and fields[0].lower() == "smiles"):
            continue
        name = fields[1] if len(fields) > 1 else f"mol{number}"
        records.append((name, fields[0]))
    if not records:
        raise InferenceError(f"{path}: no SMILES found; write one molecule per line")
    return records


def _check_symbols(model, records: list[tuple[str, str]], path: str) -> None:
    """Fail on the first unknown symbol naming the file and record, before any model work."""
    for name, sequence in records:
        model.tokenizer.encode(sequence, where=f"{path} record {name!r}")


def _write_fasta(path: str, records: list[tuple[str, str]]) -> None:
    with open(path, "w") as fh:
        for name, sequence in records:
            fh.write(f">{name}\n{sequence}\n")


def _progress(items, desc: str):
    from data_pipeline.build_progress import track

    return track(items, desc, "seq", total=len(items), enabled=len(items) >= 2)


# ---- score --------------------------------------------------------------------------------------

def _register_score(subparsers) -> None:
    parser = subparsers.add_parser(
        "score", help="log-likelihood and perplexity of each sequence in a FASTA/SMILES file",
        description="Causal models: log p(sequence | start token); masked-LM models: the "
                    "pseudo-log-likelihood (each token masked in turn). Writes CSV "
                    "name,num_tokens,log_likelihood,perplexity.")
    _add_model_dir(parser)
    parser.add_argument("input", metavar="INPUT", help="FASTA (DNA, protein) or SMILES file")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    parser.set_defaults(handler=_run_score)


def _run_score(args) -> int:
    model = _load(args)
    records = read_sequences(args.input, model.modality)
    _check_symbols(model, records, args.input)
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "num_tokens", "log_likelihood", "perplexity"])
        for start in _progress(range(0, len(records), args.batch_size), "scoring"):
            batch = records[start: start + args.batch_size]
            for (name, _), score in zip(batch, model.score([s for _, s in batch], args.batch_size)):
                writer.writerow([name, score.num_tokens, f"{score.log_likelihood:.6f}", f"{score.perplexity:.6f}"])
    print(f"scored {len(records)} sequences -> {args.out}")
    return 0


# ---- embed --------------------------------------------------------------------------------------

def _register_embed(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="mean-pooled (and optionally per-token) hidden states as NPY",
        description="Final normed hidden states. Bidirectional models use both directions. "
                    "Writes an (N, d_model) float32 NPY of mean-pooled vectors in input order "
                    "and a names file next to it.")
    _add_model_dir(parser)
    parser.add_argument("input", metavar="INPUT", help="FASTA (DNA, protein) or SMILES file")
    parser.add_argument("--out", required=True, help="NPY file for the pooled (N, d_model) matrix")
    parser.add_argument("--per-token", default=None, metavar="NPZ",
                        help="also write per-token states, one (L, d_model) array per sequence name")
    parser.set_defaults(handler=_run_embed)


def _run_embed(args) -> int:
    import numpy as np

    model = _load(args)
    records = read_sequences(args.input, model.modality)
    _check_symbols(model, records, args.input)
    pooled, per_token = [], {}
    for name, sequence in _progress(records, "embedding"):
        embedding = model.embed([sequence])[0]
        pooled.append(embedding.pooled.numpy())
        if args.per_token:
            per_token[name] = embedding.per_token.numpy()
    np.save(args.out, np.stack(pooled).astype(np.float32))
    Path(args.out).with_suffix(".names.txt").write_text("".join(f"{name}\n" for name, _ in records))
    if args.per_token:
        np.savez(args.per_token, **per_token)
    print(f"embedded {len(records)} sequences -> {args.out}")
    return 0


# ---- generate -----------------------------------------------------------------------------------

def _register_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="sample sequences in recurrent step mode (constant memory)",
        description="Protein: --context homologs.fasta generates new members of that family. "
                    "Molecules: --context domain.smi generates molecules of that domain and "
                    "prints RDKit validity, uniqueness and novelty. Without --context: continue "
                    "--prompt (any modality).")
    _add_model_dir(parser)
    parser.add_argument("--out", required=True,
                        help="FASTA to write; for molecules with --context a CSV smiles,valid,canonical")
    parser.add_argument("--context", default=None,
                        help="conditioning set: FASTA of homologs (protein) or SMILES of one domain")
    parser.add_argument("--prompt", default="", help="sequence start to continue (no --context)")
    parser.add_argument("--num", type=int, default=1, help="how many sequences to generate (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="length limit per sequence (default 256)")
    _add_sampling(parser)
    parser.set_defaults(handler=_run_generate)


def _run_generate(args) -> int:
    model = _load(args)
    settings = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    context = None
    if args.context:
        records = read_sequences(args.context, model.modality)
        _check_symbols(model, records, args.context)
        context = [s for _, s in records]
    if context is not None and model.modality == "molecules":
        result = model.generate_molecules(context, args.num, args.max_new_tokens, seed=args.seed, **settings)
        with open(args.out, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["smiles", "valid", "canonical"])
            for smiles, canonical in zip(result.smiles, result.canonical):
                writer.writerow([smiles, int(canonical is not None), canonical or ""])
        print(f"validity {result.validity:.3f}  uniqueness {result.uniqueness:.3f}  "
              f"novelty {result.novelty:.3f}  ({len(result.smiles)} molecules -> {args.out})")
        return 0
    if context is not None and model.modality == "protein":
        sequences = model.generate_protein(context, args.num, args.max_new_tokens, seed=args.seed, **settings)
    elif context is not None:
        from modeling.inference import InferenceError

        raise InferenceError("--context applies to protein and molecule models; use --prompt for DNA")
    else:
        sequences = [model.generate(args.prompt, args.max_new_tokens, seed=args.seed + n, **settings).text
                     for n in _progress(range(args.num), "generating")]
    _write_fasta(args.out, [(f"generated_{n}", s) for n, s in enumerate(sequences)])
    print(f"generated {len(sequences)} sequences -> {args.out}")
    return 0


# ---- infill -------------------------------------------------------------------------------------

def _register_infill(subparsers) -> None:
    parser = subparsers.add_parser(
        "infill", help="fill masked spans of proteins (FIM), conditioned on homologs",
        description="Each record of MASKED marks the spans to fill with runs of '?' (their "
                    "length sets the positions of what follows, as in training), at most 5 "
                    "spans. Writes FASTA of the filled sequences.")
    _add_model_dir(parser)
    parser.add_argument("masked", metavar="MASKED", help="FASTA of sequences with '?' spans")
    parser.add_argument("--context", default=None, help="FASTA of homologs to condition on")
    parser.add_argument("--out", required=True, help="FASTA file to write")
    parser.add_argument("--max-span-tokens", type=int, default=64, help="length limit per span (default 64)")
    _add_sampling(parser)
    parser.set_defaults(handler=_run_infill)


def _run_infill(args) -> int:
    from data_pipeline.readers import read_fasta

    model = _load(args)
    context = [s for _, s in read_sequences(args.context, "protein")] if args.context else []
    masked = [(record.name, record.sequence) for record in read_fasta(args.masked)]
    filled = []
    for name, sequence in _progress(masked, "infilling"):
        result = model.infill(context, sequence, args.max_span_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed)
        filled.append((name, result.sequence))
    _write_fasta(args.out, filled)
    print(f"filled {len(filled)} sequences -> {args.out}")
    return 0
