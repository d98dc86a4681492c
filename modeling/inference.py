"""Inference on an exported model: what a downstream team uses, without the training stack.

An export directory (written by `bioxlstm export`) holds `model.safetensors`, `config.json`
(ModelConfig.to_dict), `tokenizer.json` and a model card. `load(path)` needs only torch,
safetensors, `modeling` and the stdlib-only tokenizers: no DeepSpeed, Megatron, submitit or
WebDataset is imported here.

    model = load("exports/prot-26m")
    model.score(["MKTAYIAK", ...])            # log-likelihood and perplexity per sequence
    model.embed(["MKTAYIAK"])                 # per-token and mean-pooled hidden states
    model.generate("MKT", max_new_tokens=50, temperature=0.8, top_p=0.9, seed=0)
    model.generate_protein(homologs, ...)     # homology-conditioned generation
    model.infill(homologs, "MKT???AYIAK")     # FIM: each run of '?' is a span to fill
    model.generate_molecules(domain_smiles, num_molecules=20)   # + RDKit validity/uniqueness/novelty
"""
from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from data_pipeline.tokenizers import load_tokenizer
from modeling.errors import ModelingError
from data_pipeline.formatters import protein_fim_sequence
from modeling.sampling import RecurrentSession, SamplingSettings, StepTrace, generate_recurrent, sample_batch

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "README.md"
TRAINING_FILE = "training.json"   # provenance incl. the curriculum's context lengths (bioxlstm export)
INFILL_MASK_CHAR = "?"
MAX_FIM_SPANS = 5           # sentinels <mask-1> .. <mask-5> (DESIGN.md section 8, FIM)
MAX_PROTEIN_POSITION = 2047  # position ids are clamped here in training (DESIGN.md section 8)
PACK_ROW_TOKENS = 1024       # score/embed pack sequences into rows at least this long


class InferenceError(ModelingError):
    """An export directory or an inference input the user must fix."""


@dataclass
class SequenceScore:
    """Causal models: log p(sequence tokens | start token), summed over `num_tokens` tokens.
    Masked (MLM) models: the pseudo-log-likelihood (each token masked in turn)."""

    log_likelihood: float
    num_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_likelihood / max(self.num_tokens, 1))


@dataclass
class Embedding:
    per_token: torch.Tensor      # (L, d_model): one row per sequence token, start token excluded
    pooled: torch.Tensor         # (d_model,): mean over the sequence tokens


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    stopped_by: str | None       # the stop token that ended generation, None if max_new_tokens
    state_bytes: list[int]       # recurrent state size after every step (constant by design)
    step_logits: list[torch.Tensor] = field(default_factory=list)   # with keep_logits=True


@dataclass
class Infill:
    sequence: str                # the masked sequence with every span filled
    spans: list[str]             # the generated content of each span, in order


@dataclass
class MoleculeGeneration:
    smiles: list[str]
    validity: float              # fraction RDKit parses
    uniqueness: float            # distinct canonical SMILES / valid
    novelty: float               # valid unique molecules not in the reference set / valid unique
    canonical: list[str | None] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InferenceError(f"{path} not found: {path.parent} is not a model exported by "
                             "`bioxlstm export CKPT_DIR OUT_DIR`") from None
    except json.JSONDecodeError as err:
        raise InferenceError(f"{path}: not valid JSON ({err}); re-export the model") from None


def load(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> "BioXLSTM":
    """An exported model ready for inference. `dtype=None` keeps the stored dtype (fp32 or bf16)."""
    from safetensors.torch import load_file

    from modeling import ModelConfig, build_model

    root = Path(path)
    if not root.is_dir():
        raise InferenceError(f"{root}: no such export directory")
    config = ModelConfig.from_dict(_read_json(root / CONFIG_FILE))
    tokenizer = load_tokenizer(str(root / TOKENIZER_FILE))
    weights_path = root / WEIGHTS_FILE
    if not weights_path.is_file():
        raise InferenceError(f"{weights_path} not found; re-export the model")
    try:
        weights = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise InferenceError(f"{weights_path}: cannot read ({err}); re-export the model") from None
    stored_dtype = next(iter(weights.values())).dtype if weights else torch.float32
    # parameters in the stored dtype before loading, so float64 weights are not rounded to fp32
    model = build_model(config).to(stored_dtype)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InferenceError(f"{weights_path} does not match {root / CONFIG_FILE}: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; re-export")
    model = model.to(device=device, dtype=dtype or stored_dtype).eval()
    return BioXLSTM(model, config, tokenizer, torch.device(device))


class BioXLSTM:
    """A model plus its tokenizer, with the modality's sequence format built in."""

    def __init__(self, model, config, tokenizer, device: torch.device = torch.device("cpu")):
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.device = device
        self._primed = None          # (context ids, RecurrentSession, positions) of the last sampled context

    # ---- formats -----------------------------------------------------------------------------

    @property
    def modality(self) -> str:
        return self.tokenizer.kind

    @property
    def is_causal(self) -> bool:
        return self.config.causal and self.config.head == "lm"

    def _start_ids(self) -> list[int]:
        """The token every training sample of this modality starts with."""
        if self.modality == "dna":
            return []  # DNA windows are plain bases (data_pipeline.formatters.dna_clm)
        start = {"protein": "<cls>", "molecules": "[BEG]"}[self.modality]
        return [self.tokenizer.token_id(start)]

    def _encode(self, sequence: str, where: str) -> list[int]:
        if not sequence:
            raise InferenceError(f"{where}: empty sequence")
        return self.tokenizer.encode(sequence, where=where)

    @property
    def max_position(self) -> int:
        return int(self.config.max_position_id)

    def _positions(self, ids: Sequence[int]) -> list[int]:
        if self.modality == "protein":
            return protein_position_ids(ids, self.tokenizer.cls_id, self.max_position)
        return list(range(len(ids)))

    def _forward(self, ids: list[list[int]], positions: list[list[int]], return_hidden=False,
                 document_starts=None):
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        position_ids = torch.tensor(positions, dtype=torch.long, device=self.device)
        if document_starts is not None:
            document_starts = torch.tensor(document_starts, dtype=torch.bool, device=self.device)
        with torch.no_grad():
            return self.model(input_ids, position_ids=position_ids, return_hidden=return_hidden,
                              document_starts=document_starts)

    def _packed_outputs(self, sequences: list[list[int]], batch_size: int, return_hidden=False) -> list:
        """Logits (or hidden states) of every sequence, computed on packed rows: sequences placed
        one after another (longest first) in rows as long as the longest one (at least
        PACK_ROW_TOKENS), with a state reset at each, so each equals its own forward (exact for
        every model, bidirectional and RC ones included); `batch_size` rows per forward."""
        row_len = max(max(len(ids) for ids in sequences), PACK_ROW_TOKENS)
        rows: list[list[int]] = []                          # sequence indices per row
        room: list[int] = []
        for n in sorted(range(len(sequences)), key=lambda n: -len(sequences[n])):
            fit = next((r for r, left in enumerate(room) if left >= len(sequences[n])), None)
            if fit is None:
                rows.append([])
                room.append(row_len)
                fit = len(rows) - 1
            rows[fit].append(n)
            room[fit] -= len(sequences[n])
        outputs: list = [None] * len(sequences)
        pad = self.tokenizer.pad_id
        for first in range(0, len(rows), batch_size):
            batch = rows[first:first + batch_size]
            ids, positions, starts = [], [], []
            for row in batch:
                row_ids = [t for n in row for t in sequences[n]]
                row_pos = [p for n in row for p in self._positions(sequences[n])]
                row_starts = [flag for n in row for flag in [True] + [False] * (len(sequences[n]) - 1)]
                fill = row_len - len(row_ids)
                ids.append(row_ids + [pad] * fill)
                positions.append(row_pos + [0] * fill)
                starts.append(row_starts + ([True] + [False] * (fill - 1) if fill else []))
            out = self._forward(ids, positions, return_hidden, starts).float()
            for r, row in enumerate(batch):
                offset = 0
                for n in row:
                    outputs[n] = out[r, offset:offset + len(sequences[n])]
                    offset += len(sequences[n])
        return outputs

    # ---- scoring and embeddings ------------------------------------------------------------

    def score(self, sequences: Sequence[str], batch_size: int = 16) -> list[SequenceScore]:
        """Log-likelihood and perplexity of each sequence (causal), or pseudo-log-likelihood (MLM)."""
        encoded = [self._encode(s, f"sequence {n}") for n, s in enumerate(sequences)]
        if not self.is_causal:
            return [self._pseudo_log_likelihood(ids) for ids in encoded]
        for n, ids in enumerate(encoded):
            if len(self._start_ids()) + len(ids) < 2:
                raise InferenceError(f"sequence {n}: a {self.modality} sequence needs at least 2 "
                                     "tokens to score (the first one is only conditioned on)")
        rows = [self._start_ids() + ids for ids in encoded]
        scores = []
        for ids, logits in zip(rows, self._packed_outputs(rows, batch_size)):
            log_probs = torch.log_softmax(logits[:-1], dim=-1)
            targets = torch.tensor(ids[1:], device=logits.device)
            token_ll = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            scores.append(SequenceScore(float(token_ll.double().sum()), len(targets)))
        return scores

    def _pseudo_log_likelihood(self, sequence_ids: list[int]) -> SequenceScore:
        mask_token = {"dna": "[MASK]", "protein": "<mask>"}.get(self.modality)
        if mask_token is None:
            raise InferenceError(f"masked-LM scoring is not defined for {self.modality} models")
        ids = self._start_ids() + sequence_ids
        offset = len(self._start_ids())
        rows = []
        for position in range(offset, len(ids)):
            row = list(ids)
            row[position] = self.tokenizer.token_id(mask_token)
            rows.append(row)
        logits = self._forward(rows, [self._positions(ids)] * len(rows)).float()
        log_probs = torch.log_softmax(logits, dim=-1)
        total = 0.0
        for row, position in enumerate(range(offset, len(ids))):
            total += float(log_probs[row, position, ids[position]])
        return SequenceScore(total, len(sequence_ids))

    def embed(self, sequences: Sequence[str], batch_size: int = 16) -> list[Embedding]:
        """Final normed hidden states per token and their mean. Bidirectional models see both
        directions inside the model, so every token's vector uses the whole sequence."""
        encoded = [self._encode(s, f"sequence {n}") for n, s in enumerate(sequences)]
        offset = len(self._start_ids())
        rows = [self._start_ids() + ids for ids in encoded]
        result = []
        for hidden in self._packed_outputs(rows, batch_size, return_hidden=True):
            tokens = hidden[offset:].cpu()
            result.append(Embedding(tokens, tokens.mean(dim=0)))
        return result

    # ---- generation ----------------------------------------------------------------------------

    def _require_causal(self, what: str) -> None:
        if not self.is_causal:
            raise InferenceError(f"{what} needs a causal (CLM) model; this one is bidirectional "
                                 "or has an MLM head: use score or embed")

    def _settings(self, temperature, top_k, top_p) -> SamplingSettings:
        try:
            return SamplingSettings(temperature, top_k, top_p)
        except ValueError as err:
            raise InferenceError(str(err)) from None

    def _special_ids(self) -> list[int]:
        """Ids that are not sequence content (never sampled unless they are a stop token).
        SMILES bracket atoms such as `[C@@H]` are content; only the named specials are not.
        Ids beyond the model's vocabulary (DNA's padding ids with a 12-id model) have no logit."""
        if self.modality == "molecules":
            ids = [self.tokenizer.token_id(t) for t in self.tokenizer.special_tokens]
        else:
            ids = [i for i, token in enumerate(self.tokenizer.vocab)
                   if len(token) > 1 and token[0] in "<[" and token[-1] in ">]"]
        return [i for i in ids if i < self.config.vocab_size]

    def generate(self, prompt: str = "", max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 keep_logits: bool = False) -> Generation:
        """Continue `prompt` (after the modality's start token) in recurrent step mode.

        Stops where a training sample ends a sequence (protein: the next `<cls>` or `<eos>`;
        molecules: '.' or `[END]`; DNA never: windows have no end token) or after
        `max_new_tokens`.
        """
        self._require_causal("generate")
        prompt_ids = self._start_ids() + (self._encode(prompt, "prompt") if prompt else [])
        if not prompt_ids:
            raise InferenceError("DNA generation needs a prompt of at least one base (--prompt)")
        stop_tokens = {"protein": ["<cls>", "<eos>"], "molecules": [".", "[END]"], "dna": []}[self.modality]
        return self._generate_from(prompt_ids, len(self._start_ids()), max_new_tokens,
                                   self._settings(temperature, top_k, top_p), seed, stop_tokens,
                                   keep_logits=keep_logits)

    def _generate_from(self, prompt_ids, keep_from, max_new_tokens, settings, seed, stop_tokens,
                       keep_logits=False) -> Generation:
        stop_ids = [self.tokenizer.token_id(t) for t in stop_tokens]
        banned = [i for i in self._special_ids() if i not in stop_ids]
        generator = self._generator(seed)
        trace = generate_recurrent(
            self.model, prompt_ids, max_new_tokens, settings, generator,
            prompt_positions=self._positions(prompt_ids), next_position=self._next_position,
            stop_ids=stop_ids, banned_ids=banned, keep_logits=keep_logits, device=self.device)
        return self._to_generation(prompt_ids[keep_from:], trace)

    def _sample_many(self, context_ids: list[int], count: int, max_new_tokens: int, settings,
                     seed: int | None, stop_tokens: list[str]) -> list[str]:
        """`count` continuations of one context: the context is fed once and its state forked,
        so a long homolog or domain context costs one pass, not one per sample."""
        stop_ids = [self.tokenizer.token_id(t) for t in stop_tokens]
        banned = [i for i in self._special_ids() if i not in stop_ids]
        primed = RecurrentSession(self.model, self.device)
        positions = self._positions(context_ids)
        primed.feed_all(context_ids, positions)
        results = []
        for n in range(count):
            session = primed.fork()
            last = [positions[-1]]

            def position_of(k: int, token: int) -> int:
                last[0] = self._next_position(last[0], token)
                return last[0]

            trace = session.sample(max_new_tokens, settings, self._generator(None if seed is None else seed + n),
                                   position_of, stop_ids, banned)
            results.append(self._to_generation([], trace).text)
        return results

    def sample_continuations(self, context_ids: list[int], count: int, max_new_tokens: int,
                             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                             seed: int | None = None, stop_tokens: Sequence[str] = (),
                             batch_size: int = 64) -> list[list[int]]:
        """`count` sampled continuations (token ids, stop token excluded) of `context_ids` (the
        modality's start token included by the caller), stepped `batch_size` at a time from one
        primed state. Deterministic for a given seed and batch size: batch b uses seed + b."""
        self._require_causal("sampling")
        if not context_ids:
            raise InferenceError("sampling needs a context of at least one token (the start token)")
        settings = self._settings(temperature, top_k, top_p)
        stop_ids = [self.tokenizer.token_id(t) for t in stop_tokens]
        banned = [i for i in self._special_ids() if i not in stop_ids]
        primed, positions = self._primed_session(context_ids)
        results: list[list[int]] = []
        for number, first in enumerate(range(0, count, batch_size)):
            size = min(batch_size, count - first)
            generator = self._generator(None if seed is None else seed + number)
            rows = sample_batch(self.model, primed.state, primed.logits, positions[-1], size, max_new_tokens,
                                settings, generator, self._next_position, stop_ids, banned)
            results.extend(tokens for tokens, _ in rows)
        return results

    def _primed_session(self, context_ids: list[int]):
        """The state after `context_ids` (fed in step mode), kept for the next call with the same
        context: a suite sampling several settings from one long homolog context feeds it once."""
        key = tuple(int(t) for t in context_ids)
        if self._primed is None or self._primed[0] != key:
            session = RecurrentSession(self.model, self.device)
            positions = self._positions(context_ids)
            session.feed_all(context_ids, positions)
            self._primed = (key, session, positions)
        return self._primed[1], self._primed[2]

    def _generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        return generator

    def _next_position(self, previous_position: int, token: int) -> int:
        if self.modality == "protein":
            return 0 if token == self.tokenizer.cls_id else min(previous_position + 1, self.max_position)
        return previous_position + 1

    def _to_generation(self, prompt_part: list[int], trace: StepTrace) -> Generation:
        body = trace.token_ids[:-1] if trace.stopped_by is not None else trace.token_ids
        stopped = self.tokenizer.vocab[trace.stopped_by] if trace.stopped_by is not None else None
        return Generation(self.tokenizer.decode(prompt_part + body), prompt_part + body,
                          stopped, trace.state_bytes, trace.step_logits)

    def generate_protein(self, homologs: Sequence[str], num_sequences: int = 1,
                         max_new_tokens: int = 512, temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, seed: int | None = None) -> list[str]:
        """New members of a protein family: the homologs as `<cls>seq<cls>seq...` context (the
        training format of one cluster), then a fresh `<cls>` and sampling until the next one."""
        self._require_modality("protein", "generate_protein")
        self._require_causal("generate_protein")
        context = self._homolog_context(homologs) + [self.tokenizer.cls_id]
        return self._sample_many(context, num_sequences, max_new_tokens,
                                 self._settings(temperature, top_k, top_p), seed, ["<cls>", "<eos>"])

    def _require_modality(self, modality: str, what: str) -> None:
        if self.modality != modality:
            raise InferenceError(f"{what} needs a {modality} model; this one is a {self.modality} model")

    def _homolog_context(self, homologs: Sequence[str]) -> list[int]:
        ids: list[int] = []
        for n, sequence in enumerate(homologs):
            ids += [self.tokenizer.cls_id] + self._encode(sequence, f"homolog {n}")
        return ids

    def infill(self, context_homologs: Sequence[str], masked_sequence: str, max_span_tokens: int = 64,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None) -> Infill:
        """Fill the masked spans of a protein (each run of '?' is one span; its length fixes the
        positions of what follows, as in training) conditioned on homologs, in the FIM layout:
        `<cls>h1<cls>h2... <cls> prefix <mask-1> mid <mask-2> suffix <eos> <mask-1>` then the model
        writes span 1 up to `<mask-2>`, span 2 up to the end (DESIGN.md section 8, FIM)."""
        self._require_modality("protein", "infill")
        self._require_causal("infill")
        pieces, span_lengths = _split_masked(masked_sequence)
        if not span_lengths:
            raise InferenceError(f"masked sequence has no span to fill: mark each span with a run of "
                                 f"{INFILL_MASK_CHAR!r}, e.g. MKT???AYIAK")
        if len(span_lengths) > MAX_FIM_SPANS:
            raise InferenceError(f"masked sequence has {len(span_lengths)} spans; FIM has sentinels "
                                 f"for at most {MAX_FIM_SPANS}")
        tok = self.tokenizer
        residues, spans = [], []
        for index, piece in enumerate(pieces):
            residues += self._encode(piece, "masked sequence") if piece else []
            if index < len(span_lengths):
                spans.append((len(residues), len(residues) + span_lengths[index]))
                residues += [tok.token_id(tok.wildcard)] * span_lengths[index]  # never fed
        mask_ids = [tok.fim_mask_id(k) for k in range(1, MAX_FIM_SPANS + 1)]
        tokens, positions = protein_fim_sequence(residues, spans, tok.cls_id, tok.eos_id, mask_ids,
                                                 self.max_position)
        query_end = tokens.index(tok.eos_id) + 1   # `<cls> prefix <mask-1> ... suffix <eos>`
        context = self._homolog_context(context_homologs)
        session = RecurrentSession(self.model, self.device)
        session.feed_all(context + tokens[:query_end], self._positions(context) + positions[:query_end])
        settings = self._settings(temperature, top_k, top_p)
        generator = self._generator(seed)
        filled_spans = []
        for number, (start, _) in enumerate(spans, start=1):
            span_position = min(start + 1, self.max_position)   # the mask's and the span's first
            session.feed(tok.fim_mask_id(number), span_position)
            stop_tokens = ["<cls>", "<eos>"] if number == len(spans) else [f"<mask-{number + 1}>"]
            trace = session.sample(
                max_span_tokens, settings, generator,
                positions=lambda k, token, first=span_position: min(first + k, self.max_position),
                stop_ids=[tok.token_id(t) for t in stop_tokens],
                banned_ids=[i for i in self._special_ids() if tok.vocab[i] not in stop_tokens])
            body = trace.token_ids[:-1] if trace.stopped_by is not None else trace.token_ids
            filled_spans.append(tok.decode(body))
        filled = "".join(piece + (filled_spans[n] if n < len(filled_spans) else "")
                         for n, piece in enumerate(pieces))
        return Infill(filled, filled_spans)

    def generate_molecules(self, context_smiles: Sequence[str], num_molecules: int = 10,
                           max_new_tokens: int = 128, temperature: float = 1.0, top_k: int | None = None,
                           top_p: float | None = None, seed: int | None = None,
                           reference_smiles: Sequence[str] | None = None) -> MoleculeGeneration:
        """Molecules of the domain that `context_smiles` come from (Chem-xLSTM in-context
        generation): the context molecules joined with '.', then sampling up to the next '.' or
        `[END]`, once per molecule. Novelty is against `reference_smiles` (default: the context)."""
        self._require_modality("molecules", "generate_molecules")
        self._require_causal("generate_molecules")
        tok = self.tokenizer
        context = list(self._start_ids())
        for n, smiles in enumerate(context_smiles):
            context += self._encode(smiles, f"context molecule {n}") + [tok.separator_id]
        generated = self._sample_many(context, num_molecules, max_new_tokens,
                                      self._settings(temperature, top_k, top_p), seed, [".", "[END]"])
        reference = context_smiles if reference_smiles is None else reference_smiles
        return molecule_metrics(generated, reference)


def molecule_metrics(generated: Sequence[str], reference: Sequence[str]) -> MoleculeGeneration:
    """Validity, uniqueness and novelty as in the Chem-xLSTM paper, via RDKit canonical SMILES."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")

    def canonical(smiles: str) -> str | None:
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        return Chem.MolToSmiles(mol) if mol is not None else None

    canon = [canonical(s) for s in generated]
    valid = [c for c in canon if c is not None]
    unique = set(valid)
    known = {c for c in (canonical(s) for s in reference) if c is not None}
    validity = len(valid) / len(generated) if generated else 0.0
    uniqueness = len(unique) / len(valid) if valid else 0.0
    novelty = len(unique - known) / len(unique) if unique else 0.0
    return MoleculeGeneration(list(generated), validity, uniqueness, novelty, canon)


def protein_position_ids(ids: Sequence[int], cls_id: int, max_position: int = MAX_PROTEIN_POSITION) -> list[int]:
    """Plain (non-FIM) members: `<cls>` 0, residue j -> j + 1, clamped; the same positions
    `data_pipeline.formatters.protein_fim_sequence` gives a member without spans."""
    positions, position = [], -1
    for token in ids:
        position = 0 if token == cls_id else position + 1
        positions.append(min(max(position, 0), max_position))
    return positions


def _split_masked(masked_sequence: str) -> tuple[list[str], list[int]]:
    """'AB??C?D' -> pieces ['AB', 'C', 'D'] and span lengths [2, 1]."""
    pieces, lengths, current, run = [], [], [], 0
    for char in masked_sequence:
        if char == INFILL_MASK_CHAR:
            if run == 0:
                pieces.append("".join(current))
                current = []
            run += 1
        else:
            if run:
                lengths.append(run)
                run = 0
            current.append(char)
    if run:
        lengths.append(run)
    pieces.append("".join(current))
    return pieces, lengths
