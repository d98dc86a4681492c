"""Modality formatters: one stored sample -> one *document* of at most `context_len` tokens.

Every formatter returns a `Document` (inputs, labels, positions: three lists of one length
n <= S = context_len), unpadded: the loader either pads it into a row of its own
(`pad_document`) or packs several into one row (data_pipeline/packing.py). Labels are aligned
with the logits: for CLM label[t] is token t+1 of the same document (-100 after its last token,
so a document never predicts the next one); -100 marks positions without loss (unmasked MLM
positions). Cutting a document to its first r positions therefore keeps exactly the targets
that exist in those r positions. All randomness comes from the `random.Random` passed in, which
the loader derives from (seed, epoch, item): that is what makes a resumed stream identical.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple

IGNORE = -100


class Document(NamedTuple):
    """One formatted sample: equal-length lists of input ids, aligned labels and position ids."""

    inputs: list
    labels: list
    positions: list


def causal_document(tokens: list[int], positions: list[int], context_len: int) -> Document:
    """Inputs = the first S tokens, labels = the next token of the same stream (none after the
    last one)."""
    inputs = tokens[:context_len]
    labels = tokens[1:context_len + 1]
    return Document(inputs, labels + [IGNORE] * (len(inputs) - len(labels)), positions[:len(inputs)])


def pad_document(document: Document, context_len: int, pad_id: int) -> Document:
    """A row holding one document, padded to S without loss (position 0 on padding)."""
    pad = context_len - len(document.inputs)
    return Document(document.inputs + [pad_id] * pad, document.labels + [IGNORE] * pad,
                    document.positions + [0] * pad)


# ----------------------------------------------------------------------------- DNA


def dna_window(ids: bytes, context_len: int, need: int, sub_index: int, rng: random.Random,
               train: bool) -> list[int]:
    """`need` consecutive ids: a random offset for training, the sub_index-th tile for validation."""
    if len(ids) <= need:
        return list(ids)
    if train:
        start = rng.randrange(0, len(ids) - need + 1)
    else:
        start = min(sub_index * need, len(ids) - need)
    return list(ids[start:start + need])


def dna_clm(window: list[int], context_len: int, complement: list[int] | None) -> Document:
    """Causal LM on a window of up to context_len + 1 bases; `complement` given = reverse-complement it."""
    if complement is not None:
        window = [complement[i] for i in reversed(window)]
    return causal_document(window, list(range(min(len(window), context_len))), context_len)


def dna_mlm(window: list[int], context_len: int, mask_id: int, base_ids: list[int],
            probability: float, rng: random.Random, complement: list[int] | None) -> Document:
    """BERT masking: each base selected with p; selected -> 80% [MASK], 10% random base, 10% kept."""
    if complement is not None:
        window = [complement[i] for i in reversed(window)]
    window = window[:context_len]
    inputs, labels = [], []
    for token in window:
        if rng.random() < probability:
            labels.append(token)
            roll = rng.random()
            if roll < 0.8:
                inputs.append(mask_id)
            elif roll < 0.9:
                inputs.append(rng.choice(base_ids))
            else:
                inputs.append(token)
        else:
            inputs.append(token)
            labels.append(IGNORE)
    return Document(inputs, labels, list(range(len(window))))


# ----------------------------------------------------------------------------- protein


def poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method; small means only (FIM uses 1)."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def fim_spans(length: int, rng: random.Random, mean_spans: float, max_spans: int,
              span_fraction: float) -> list[tuple[int, int]]:
    """Non-overlapping (start, end) spans, DESIGN.md section 8 "FIM": count ~ Poisson(mean)
    resampled until <= max_spans; starts uniform; lengths uniform in [1, max(floor(f L), 2));
    a span is cut where the next one starts."""
    count = poisson(rng, mean_spans)
    while count > max_spans:
        count = poisson(rng, mean_spans)
    if count == 0 or length == 0:
        return []
    starts = sorted({rng.randrange(length) for _ in range(count)})
    upper = max(math.floor(span_fraction * length), 2)
    spans = []
    for number, start in enumerate(starts):
        end = min(start + rng.randrange(1, upper), length)
        if number + 1 < len(starts):
            end = min(end, starts[number + 1])
        spans.append((start, end))
    return spans


def protein_fim_sequence(residues: list[int], spans: list[tuple[int, int]], cls_id: int,
                         eos_id: int, mask_ids: list[int], max_position: int):
    """Layout `<cls> prefix <mask-1> mid ... suffix <eos> <mask-1> span1 <mask-2> span2 ...`
    with positions: <cls> 0, residue j -> j + 1 (also when moved), mask -> its span's start
    position, <eos> 0; clamped at max_position. No spans: `<cls> sequence`."""
    tokens, positions = [cls_id], [0]
    cursor = 0
    for number, (start, end) in enumerate(spans):
        tokens.extend(residues[cursor:start])
        positions.extend(range(cursor + 1, start + 1))
        tokens.append(mask_ids[number])
        positions.append(start + 1)
        cursor = end
    tokens.extend(residues[cursor:])
    positions.extend(range(cursor + 1, len(residues) + 1))
    if spans:
        tokens.append(eos_id)
        positions.append(0)
        for number, (start, end) in enumerate(spans):
            tokens.append(mask_ids[number])
            positions.append(start + 1)
            tokens.extend(residues[start:end])
            positions.extend(range(start + 1, end + 1))
    return tokens, [min(p, max_position) for p in positions]


def protein_icl(members: list[list[int]], context_len: int, rng: random.Random, tokenizer,
                fim: bool, mean_spans: float, max_spans: int, span_fraction: float,
                max_position: int, shuffle: bool) -> Document:
    """Homology in-context sample: shuffled members, each FIM-formatted, concatenated and
    truncated to the context length (DESIGN.md section 8). Loss on every token."""
    order = list(range(len(members)))
    if shuffle:
        rng.shuffle(order)
    mask_ids = [tokenizer.fim_mask_id(k) for k in range(1, 6)]
    tokens: list[int] = []
    positions: list[int] = []
    for index in order:
        residues = members[index]
        spans = fim_spans(len(residues), rng, mean_spans, max_spans, span_fraction) if fim else []
        seq_tokens, seq_positions = protein_fim_sequence(
            residues, spans, tokenizer.cls_id, tokenizer.eos_id, mask_ids, max_position)
        tokens.extend(seq_tokens)
        positions.extend(seq_positions)
        if len(tokens) > context_len:
            break
    return causal_document(tokens, positions, context_len)


# ----------------------------------------------------------------------------- molecules


def molecules_icl(molecules: list[list[int]], context_len: int, rng: random.Random, tokenizer,
                  shuffle: bool) -> Document:
    """`[BEG] mol . mol . ... [END]`: whole molecules of one domain in a fresh order each
    sample, as many as fit (the first is truncated if it alone is too long)."""
    order = list(range(len(molecules)))
    if shuffle:
        rng.shuffle(order)
    budget = context_len + 1  # tokens, including the label of the last input
    tokens = [tokenizer.beg_id]
    for count, index in enumerate(order):
        piece = ([tokenizer.separator_id] if count else []) + molecules[index]
        if count and len(tokens) + len(piece) + 1 > budget:
            break
        tokens.extend(piece)
    tokens.append(tokenizer.end_id)
    return causal_document(tokens, list(range(len(tokens))), context_len)
