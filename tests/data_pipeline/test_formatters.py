"""Formatters on real demo data: FIM layout and positions, RC windows, MLM masks, domain concatenation."""
import collections
import random

import pytest

from data_pipeline import formatters
from data_pipeline.config import DataConfig
from data_pipeline.loader import build_loader
from data_pipeline.manifest import read_manifest
from data_pipeline.shards import ShardReader
from data_pipeline.tokenizers import DNATokenizer, ProteinTokenizer

PROT = ProteinTokenizer()
MASKS = [PROT.fim_mask_id(k) for k in range(1, 6)]


def _real_clusters(build, count):
    shard = read_manifest(build)["splits"]["train"]["shards"][0]
    reader = ShardReader(build / shard["name"])
    return [reader.read_sequences(i) for i in range(count)]


def _undo_fim(tokens, positions):
    """Split a packed stream at <cls>, restore each protein from its FIM layout, and return
    (sequence, expected positions, number of spans) for each; checks the layout on the way."""
    proteins = []
    starts = [i for i, t in enumerate(tokens) if t == PROT.cls_id] + [len(tokens)]
    for begin, end in zip(starts, starts[1:]):
        seq, pos = tokens[begin + 1:end], positions[begin + 1:end]
        assert positions[begin] == 0
        if PROT.eos_id not in seq:
            assert not set(seq) & set(MASKS)
            assert pos == list(range(1, len(seq) + 1))
            proteins.append((PROT.decode(seq), 0))
            continue
        cut = seq.index(PROT.eos_id)
        body, body_pos, tail, tail_pos = seq[:cut], pos[:cut], seq[cut + 1:], pos[cut + 1:]
        assert pos[cut] == 0
        tail_marks = [i for i, t in enumerate(tail) if t in MASKS]
        assert tail_marks[0] == 0 and [tail[i] for i in tail_marks] == MASKS[:len(tail_marks)]
        spans = [tail[a + 1:b] for a, b in zip(tail_marks, tail_marks[1:] + [len(tail)])]
        span_pos = [tail_pos[a:b] for a, b in zip(tail_marks, tail_marks[1:] + [len(tail)])]
        restored, restored_pos, k = [], [], 0
        for token, position in zip(body, body_pos):
            if token in MASKS:
                assert token == MASKS[k] and span_pos[k][0] == position  # mask gets its span's start
                assert span_pos[k][1:] == list(range(position, position + len(spans[k])))
                restored += spans[k]
                restored_pos += span_pos[k][1:]
                k += 1
            else:
                restored.append(token)
                restored_pos.append(position)
        assert k == len(spans)
        assert restored_pos == list(range(1, len(restored) + 1))  # moved tokens keep positions
        for span in spans:
            assert 1 <= len(span) < max(len(restored) // 5, 2)
        proteins.append((PROT.decode(restored), len(spans)))
    return proteins


def test_fim_layout_and_positions_on_real_clusters(demo_builds):
    rng = random.Random(7)
    span_counts = []
    for members in _real_clusters(demo_builds["protein"], 40):
        encoded = [PROT.encode(m) for m in members]
        S = sum(len(m) + 12 for m in members)  # room for every member: nothing truncated
        inputs, labels, positions = formatters.protein_icl(
            encoded, S, rng, PROT, True, 1.0, 5, 0.2, 10**6, True)
        stream = [t for t in inputs if t != PROT.pad_id]
        assert labels[:len(stream) - 1] == stream[1:]  # CLM labels are the next token
        restored = _undo_fim(stream, positions[:len(stream)])
        assert sorted(r for r, _ in restored) == sorted(members)
        span_counts += [n for _, n in restored]
    counts = collections.Counter(span_counts)
    assert max(counts) <= 5 and counts[0] > 0 and counts[1] > 0
    # Poisson(1): P(0) = P(1) = 0.368; with ~hundreds of proteins both are well inside 0.25..0.5
    assert 0.25 < counts[0] / len(span_counts) < 0.5


def test_protein_positions_clamped_and_context_truncated(demo_builds):
    members = [PROT.encode(m) for m in _real_clusters(demo_builds["protein"], 1)[0]]
    inputs, labels, positions = formatters.protein_icl(members, 64, random.Random(0), PROT, False,
                                                       1.0, 5, 0.2, 20, True)
    assert len(inputs) == len(labels) == len(positions) == 64 and inputs[0] == PROT.cls_id
    assert max(positions) == 20 and PROT.pad_id not in inputs


def test_dna_windows_are_real_sequence_in_either_orientation(demo_builds):
    build = demo_builds["dna"]
    sequences = []
    for shard in read_manifest(build)["splits"]["train"]["shards"]:
        reader = ShardReader(build / shard["name"])
        sequences += [reader.read_sequences(i)[0] for i in range(len(reader))]
    genome = "|".join(sequences)
    rc_genome = genome[::-1].translate(str.maketrans("ACGT", "TGCA"))
    loader = build_loader(DataConfig(modality="dna", shards=str(build), num_workers=1), "train", 128, 8)
    tok = loader.tokenizer
    orientations = collections.Counter()
    for _, batch in zip(range(6), loader):
        for inputs, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
            window = tok.decode(inputs + labels[-1:])
            forward, reverse = window in genome, window in rc_genome
            assert forward or reverse
            orientations[forward] += 1
        assert batch["position_ids"][0].tolist() == list(range(128))
    assert orientations[True] > 0 and orientations[False] > 0


def test_mlm_masks_15_percent_80_10_10():
    tok = DNATokenizer()
    rng = random.Random(3)
    window = [rng.choice(tok.base_ids) for _ in range(200_000)]
    inputs, labels, _ = formatters.dna_mlm(window, len(window), tok.mask_id,
                                           tok.base_ids, 0.15, random.Random(4), None)
    selected = [i for i, label in enumerate(labels) if label != formatters.IGNORE]
    assert all(labels[i] == window[i] for i in selected)
    assert all(inputs[i] == window[i] for i in range(len(window)) if labels[i] == formatters.IGNORE)
    masked = sum(inputs[i] == tok.mask_id for i in selected) / len(selected)
    kept = sum(inputs[i] == window[i] for i in selected) / len(selected)
    assert abs(len(selected) / len(window) - 0.15) < 0.004
    assert abs(masked - 0.8) < 0.01
    # kept = 10% unchanged + 1/4 of the 10% random draws that hit the same base
    assert abs(kept - (0.1 + 0.1 / 4)) < 0.01


def test_molecule_domain_concatenation_shuffled_each_epoch(demo_builds):
    build = demo_builds["molecules"]
    cfg = DataConfig(modality="molecules", shards=str(build), num_workers=1, packing=False)
    loader = build_loader(cfg, "train", 256, 1)
    tok = loader.tokenizer
    shard = read_manifest(build)["splits"]["train"]["shards"][0]
    reader = ShardReader(build / shard["name"])
    rows_by_key = collections.defaultdict(list)
    batches = iter(loader)
    for _ in range(2 * len(loader)):
        batch = next(batches)
        labels = [t for t in batch["labels"][0].tolist() if t != -100]
        rows_by_key[loader.last_batch_keys[0]].append([batch["input_ids"][0, 0].item()] + labels)
    for key, rows in list(rows_by_key.items())[:50]:
        domain = reader.read_sequences(int(key.split(":")[1]))
        texts = []
        for row in rows:
            stream = row  # all S + 1 tokens: first input, then every label
            assert stream[0] == tok.beg_id and stream[-1] == tok.end_id
            body = tok.decode(stream[1:-1])
            molecules = body.split(".")
            assert len(set(molecules)) == len(molecules) and set(molecules) <= set(domain)
            missing = set(domain) - set(molecules)
            # whole molecules in shuffled order, until the next one (with its '.') does not fit
            assert not missing or any(len(stream) + 1 + len(tok.encode(m)) > 257 for m in missing)
            texts.append(body)
        assert len(rows) == 2
    changed = sum(len(set(map(tuple, rows))) == 2 for rows in rows_by_key.values())
    assert changed > 0.8 * len(rows_by_key)  # order reshuffled in the second epoch


def test_causal_document_labels_are_next_tokens_and_padding_has_no_loss():
    tokens = list(range(10, 20))
    document = formatters.causal_document(tokens, list(range(10)), 16)
    assert document == (tokens, tokens[1:] + [-100], list(range(10)))   # nothing after the last token
    inputs, labels, positions = formatters.pad_document(document, 16, 0)
    assert inputs == tokens + [0] * 6
    assert labels == tokens[1:] + [-100] * 7
    assert positions == list(range(10)) + [0] * 6
    # longer than the context: cut to S inputs, every label a real next token
    assert formatters.causal_document(tokens, list(range(10)), 4) == (tokens[:4], tokens[1:5], [0, 1, 2, 3])
