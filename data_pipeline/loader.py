"""Streaming, resumable, rank- and worker-split loader over a shard build.

Work is planned in *items*: one per protein cluster / molecule domain, and
max(1, tokens // window) per DNA window sample (so each epoch covers the genome about once
at any context length). For each epoch the item list is shuffled with a seed derived from
(seed, epoch), cut to a multiple of dp_size * num_workers * micro_batch_size and dealt to
slots (rank r, worker w) as `order[slot::n_slots]`: every rank gets the same number of
batches (no hang at epoch end) and context-parallel ranks of one group, which share a
dp_rank, see the same samples. Workers are logical sub-streams inside the process; batches
are taken from them round-robin, as a torch DataLoader would.

Packing (data.packing, DESIGN.md section 9). Unpacked, one item is one row and the rest of
the row is padding. Packed, a worker's items form one stream: each row takes whole documents
from it until the row is full (data_pipeline/packing.py), so a batch consumes a varying number
of items. Slots then get every item of the epoch (nothing is cut), each worker walks its own
epochs one after another (a train row that reaches the end of one epoch is filled from the
next, so train rows are always full), the train stream is endless on every rank (so every rank
yields a batch whenever asked), and validation ends when every worker's items are used (its
last rows may be short). Each batch carries `document_starts` (B, S) bool: True at each document's first
position (always at 0) and at the first padding position; the model resets its state there.

Every random choice of an item (window offset, RC, masks, member order, FIM) uses an RNG
seeded from (seed, split, epoch, item), so the position (epoch and batches consumed per worker;
packed: each worker's epoch and items consumed, and the next worker) is the whole state:
`load_state_dict` seeks there and the rest of the stream is identical.
Shards are read by random access (tar member offsets), never replayed. This is why the
webdataset pipeline classes (whose nodesplitter/workersplitter split whole shards and which
keep no resume state) are not used for reading; the shards stay plain WebDataset tars.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path

import torch

from data_pipeline import formatters
from data_pipeline.config import DataConfig
from data_pipeline.packing import RowBuilder, single_document_row
from data_pipeline.errors import ConfigError, LoaderStateError, ManifestError
from data_pipeline.manifest import SPLITS, read_manifest, verify_shard
from data_pipeline.shards import ShardReader
from data_pipeline.tokenizers import load_tokenizer

STATE_VERSION = 1             # unpacked loader states
PACKED_STATE_VERSION = 2      # packed: per-worker epochs and item cursors


class ShardLoader:
    """Iterable of batches {input_ids, labels, position_ids}: LongTensor (B, S), and
    document_starts: BoolTensor (B, S)."""

    def __init__(self, cfg: DataConfig, split: str, context_len: int, micro_batch_size: int,
                 dp_rank: int = 0, dp_size: int = 1, seed: int = 0):
        self.cfg = cfg.validate()
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
        for name, value, low in (("context_len", context_len, 2), ("micro_batch_size", micro_batch_size, 1),
                                 ("dp_size", dp_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name}={value!r}: must be an integer >= {low}")
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank={dp_rank} is outside 0..{dp_size - 1}")
        self.split, self.context_len, self.micro_batch_size = split, context_len, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed = cfg.seed + seed
        self.train = split == "train"
        self.build_dir = Path(cfg.shards)
        self.manifest = read_manifest(self.build_dir)
        if self.manifest["modality"] != cfg.modality:
            raise ManifestError(f"{self.build_dir}/manifest.json holds {self.manifest['modality']!r} "
                                f"shards but data.modality={cfg.modality!r}; fix one of them")
        self.tokenizer = load_tokenizer(self.manifest["tokenizer"])
        if self.tokenizer.kind != cfg.modality:
            raise ManifestError(f"{self.build_dir}/manifest.json: a {self.tokenizer.kind!r} tokenizer for "
                                f"{cfg.modality!r} shards; the file was edited or damaged: rebuild the shards")
        self.shards = self.manifest["splits"][split]["shards"]
        if not self.shards:
            raise ManifestError(f"{self.build_dir}: the {split} split is empty; rebuild with more "
                                "groups or another --val-fraction")
        self.items = self._plan_items()
        self.num_workers = cfg.num_workers
        self.n_slots = dp_size * cfg.num_workers
        self.packing = self._resolve_packing()
        self.batches_per_worker = self._batches_per_worker()
        if self.batches_per_worker == 0 and not self.packing:
            raise ConfigError(f"{split} split has {len(self.items)} items, fewer than dp_size x "
                              f"num_workers x micro_batch_size = {self.n_slots * micro_batch_size}; "
                              "lower one of them or build more data")
        if self.packing and self.train and len(self.items) < self.n_slots:
            raise ConfigError(f"{split} split has {len(self.items)} items, fewer than dp_size x "
                              f"num_workers = {self.n_slots} streams to deal them to; lower "
                              "data.num_workers or build more data")
        self._readers: dict[int, ShardReader] = {}
        self._slots_cache: dict = {}
        self.epoch = 0
        self.worker_batches = [0] * self.num_workers
        self.worker_epochs = [0] * self.num_workers      # packed: each worker's own epoch ...
        self.worker_cursors = [0] * self.num_workers     # ... and the items it has consumed in it
        self.next_worker = 0                             # packed: whose batch comes next
        self.skipped_samples = 0  # items drawn whose sample could not be read (skip mode)
        self.mismatched_shards: set[str] = set()  # shards whose sha256 differs from the manifest
        self.last_batch_keys: list[str | None] = []
        self._complement = (self.tokenizer.complement_table() if cfg.modality == "dna" else None)

    # ------------------------------------------------------------------ planning
    def _window_need(self) -> int:
        return self.context_len + (1 if self.cfg.objective == "clm" else 0)

    def _plan_items(self) -> list[tuple[int, int, int]]:
        """(shard, sample-in-shard, sub-window) for every item of the split, in build order."""
        items = []
        need = self._window_need()
        for shard_index, shard in enumerate(self.shards):
            for sample_index, tokens in enumerate(shard["sample_tokens"]):
                repeats = max(1, tokens // need) if self.cfg.modality == "dna" else 1
                items.extend((shard_index, sample_index, sub) for sub in range(repeats))
        return items

    def _resolve_packing(self) -> bool:
        """data.packing, or where it is None: on for protein and molecules; for DNA only where
        a stored window is shorter than one context (elsewhere every window fills its row)."""
        if self.cfg.packing is not None:
            return self.cfg.packing
        if self.cfg.modality != "dna":
            return True
        need = self._window_need()
        return any(tokens < need for shard in self.shards for tokens in shard["sample_tokens"])

    def _batches_per_worker(self) -> int:
        per_batch_round = self.n_slots * self.micro_batch_size
        if self.train:
            return len(self.items) // per_batch_round
        return -(-len(self.items) // per_batch_round)  # validation: pad, never drop

    def epoch_order(self, epoch: int) -> list[int | None]:
        """Item indices of one epoch for all slots; None = padding item (unpacked validation).
        Unpacked, the order is cut (train) or padded (validation) to whole batches on every
        slot; packed, it holds every item once."""
        order: list[int | None] = list(range(len(self.items)))
        if self.train:
            random.Random(f"order:{self.seed}:{epoch}").shuffle(order)
        if self.packing:
            return order
        total = self.batches_per_worker * self.n_slots * self.micro_batch_size
        return order[:total] + [None] * (total - len(order))

    def worker_items(self, epoch: int, worker: int, rank: int | None = None) -> list[int | None]:
        """Items of one (rank, worker) slot in one epoch; cached per epoch (one shuffle each).
        The cache keeps a few epochs, since packed workers may be in different ones."""
        rank = self.dp_rank if rank is None else rank
        key = (epoch, rank)
        if key not in self._slots_cache:
            if len(self._slots_cache) > self.num_workers:
                self._slots_cache.pop(next(iter(self._slots_cache)))      # the oldest
            order = self.epoch_order(epoch)
            start = rank * self.num_workers
            self._slots_cache[key] = [order[start + w::self.n_slots] for w in range(self.num_workers)]
        return self._slots_cache[key][worker]

    # ------------------------------------------------------------------ reading
    def _reader(self, shard_index: int) -> ShardReader | None:
        if shard_index not in self._readers:
            shard = self.shards[shard_index]
            reader = None
            try:
                if self.cfg.verify_checksums:
                    verify_shard(self.build_dir, shard)
            except ManifestError as err:
                if self.cfg.on_corrupt == "error":
                    raise
                # skip mode: keep reading; members that fail their zstd checksum are skipped
                self.mismatched_shards.add(shard["name"])
                warnings.warn(str(err), stacklevel=2)
            if (self.build_dir / shard["name"]).is_file() or self.cfg.on_corrupt == "error":
                reader = ShardReader(self.build_dir / shard["name"], self.cfg.on_corrupt, shard["samples"])
            self._readers[shard_index] = reader
        return self._readers[shard_index]

    def _item_sequences(self, item: tuple[int, int, int]) -> list[str] | None:
        reader = self._reader(item[0])
        sequences = reader.read_sequences(item[1]) if reader is not None else None
        if sequences is None:
            self.skipped_samples += 1
        return sequences

    def _document(self, item_index: int | None, epoch: int):
        """(Document of at most S tokens, key) of one item; (None, None) for a padding item or
        a sample skipped as corrupt."""
        S = self.context_len
        if item_index is None:
            return None, None
        item = self.items[item_index]
        key = f"{self.shards[item[0]]['name']}:{item[1]}:{item[2]}"
        sequences = self._item_sequences(item)
        if sequences is None:
            return None, None
        rng = random.Random(f"item:{self.seed}:{self.split}:{epoch if self.train else 0}:{item_index}")
        cfg, tok = self.cfg, self.tokenizer
        if cfg.modality == "dna":
            ids = tok.encode_bytes(sequences[0], "replace")
            window = formatters.dna_window(ids, S, self._window_need(), item[2], rng, self.train)
            complement = self._complement if (self.train and cfg.rc_augment and rng.random() < 0.5) else None
            if cfg.objective == "mlm":
                document = formatters.dna_mlm(window, S, tok.mask_id, tok.base_ids,
                                              cfg.mlm_probability, rng, complement)
            else:
                document = formatters.dna_clm(window, S, complement)
        elif cfg.modality == "protein":
            members = [list(tok.encode_bytes(s, "replace")) for s in sequences]
            document = formatters.protein_icl(members, S, rng, tok, cfg.fim, cfg.fim_mean_spans,
                                              cfg.fim_max_spans, cfg.fim_span_fraction,
                                              cfg.max_position_id, cfg.shuffle_members)
        else:
            molecules = [tok.encode(s, "replace") for s in sequences]
            document = formatters.molecules_icl(molecules, S, rng, tok, cfg.shuffle_members)
        return document, key

    @property
    def checksum_mismatches(self) -> int:
        """Shards found changed or missing; a set, so a resumed loader that re-verifies a shard
        does not count it twice."""
        return len(self.mismatched_shards)

    # ------------------------------------------------------------------ iteration
    def _batch_tensors(self, rows: list) -> dict[str, torch.Tensor]:
        """rows of (Document, document_starts, key) -> the batch dict; keys kept for audits."""
        self.last_batch_keys = [key for _, _, key in rows]
        batch = {name: torch.tensor([row[0][n] for row in rows], dtype=torch.long)
                 for n, name in enumerate(("input_ids", "labels", "position_ids"))}
        batch["document_starts"] = torch.tensor([row[1] for row in rows], dtype=torch.bool)
        return batch

    def _batch(self, epoch: int, worker: int, batch_index: int) -> dict[str, torch.Tensor]:
        """Unpacked: items batch_index*B .. of this worker's epoch, one per row."""
        B = self.micro_batch_size
        items = self.worker_items(epoch, worker)[batch_index * B:(batch_index + 1) * B]
        rows = []
        for item_index in items:
            document, key = self._document(item_index, epoch)
            rows.append(single_document_row(document, key, self.context_len, self.tokenizer.pad_id))
        return self._batch_tensors(rows)

    def _packed_row(self, worker: int):
        """Packed: the next row of `worker`'s stream. Train rows are always full (a row that
        reaches the end of the worker's epoch goes on with the next epoch's documents);
        validation rows end short when the worker's items do, and are empty after that."""
        row = RowBuilder(self.context_len, self.tokenizer.pad_id)
        readable_since_roll = True
        while row.room:
            items = self.worker_items(self.worker_epochs[worker], worker)
            if self.worker_cursors[worker] >= len(items):
                if not self.train:
                    break
                if not readable_since_roll:
                    raise ConfigError(
                        f"{self.build_dir}: a whole epoch of the {self.split} split gave data worker "
                        f"{worker} of rank {self.dp_rank} no readable sample (all skipped as corrupt); "
                        "rebuild the shards or set data.on_corrupt=error to see the first damage")
                self.worker_epochs[worker] += 1
                self.worker_cursors[worker] = 0
                readable_since_roll = False
                continue
            item_index = items[self.worker_cursors[worker]]
            self.worker_cursors[worker] += 1
            document, key = self._document(item_index, self.worker_epochs[worker])
            if document is not None:
                row.add(document, key)
                readable_since_roll = True
        return row.finish()

    def _worker_exhausted(self, worker: int) -> bool:
        return self.worker_cursors[worker] >= len(self.worker_items(0, worker))

    def _iter_packed(self):
        """Train: endless round robin over the workers. Validation: round robin over the workers
        that have items left, until none has; then rewinds."""
        W = self.num_workers
        while True:
            if not self.train:
                waiting = [(self.next_worker + n) % W for n in range(W)]
                waiting = [w for w in waiting if not self._worker_exhausted(w)]
                if not waiting:
                    self.worker_cursors, self.next_worker = [0] * W, 0
                    return
                self.next_worker = waiting[0]
            worker = self.next_worker
            rows = [self._packed_row(worker) for _ in range(self.micro_batch_size)]
            self.next_worker = (worker + 1) % W
            yield self._batch_tensors(rows)

    def __len__(self) -> int:
        """Batches per epoch on this rank (unpacked loaders; a packed epoch has no fixed length)."""
        if self.packing:
            raise TypeError("a packed loader has no fixed number of batches per epoch "
                            "(rows take as many documents as fit)")
        return self.batches_per_worker * self.num_workers

    def __iter__(self):
        """Train: endless, epoch after epoch. Validation: the rest of one pass, then rewinds."""
        if self.packing:
            yield from self._iter_packed()
            return
        while True:
            consumed = sum(self.worker_batches)
            while consumed < len(self):
                worker = consumed % self.num_workers
                batch = self._batch(self.epoch, worker, self.worker_batches[worker])
                self.worker_batches[worker] += 1
                consumed += 1
                yield batch
            self.worker_batches = [0] * self.num_workers
            if not self.train:
                return
            self.epoch += 1

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        state = {
            "version": PACKED_STATE_VERSION if self.packing else STATE_VERSION, "packing": self.packing,
            "split": self.split, "seed": self.seed, "dp_rank": self.dp_rank, "dp_size": self.dp_size,
            "num_workers": self.num_workers, "context_len": self.context_len,
            "micro_batch_size": self.micro_batch_size, "items": len(self.items),
            "skipped_samples": self.skipped_samples,
            "checksum_mismatch_shards": sorted(self.mismatched_shards),
        }
        if self.packing:
            state.update(worker_epochs=list(self.worker_epochs), worker_consumed_items=list(self.worker_cursors),
                         next_worker=self.next_worker)
        else:
            state.update(epoch=self.epoch,
                         worker_consumed_samples=[b * self.micro_batch_size for b in self.worker_batches])
        return state

    def load_state_dict(self, state: dict) -> None:
        if bool(state.get("packing", False)) != self.packing:
            written = "with" if state.get("packing") else "without"
            raise LoaderStateError(
                f"the loader state was written {written} packing but data.packing resolves to "
                f"{self.packing} here; set data.packing={str(bool(state.get('packing'))).lower()} to "
                "resume exactly, or fork the run with --from ... --stage K for a fresh loader")
        for field in ("version", "split", "seed", "dp_size", "num_workers", "context_len",
                      "micro_batch_size", "items"):
            mine = getattr(self, field, None)
            if field == "version":
                mine = PACKED_STATE_VERSION if self.packing else STATE_VERSION
            if field == "items":
                mine = len(self.items)
            if state.get(field) != mine:
                raise LoaderStateError(
                    f"loader state field {field!r} is {state.get(field)!r} but this loader has "
                    f"{mine!r}; resume with the same data config, world size and curriculum stage "
                    "(start a new stage with a fresh loader)")
        if self.packing:
            self._load_packed_position(state)
        else:
            consumed = state["worker_consumed_samples"]
            batches = [c // self.micro_batch_size for c in consumed]
            if max(batches) - min(batches) > 1 or sorted(batches, reverse=True) != batches:
                raise LoaderStateError(f"loader state worker_consumed_samples={consumed} is not a "
                                       "round-robin position; the state is corrupt")
            self.epoch = int(state["epoch"])
            self.worker_batches = batches
        self.skipped_samples = int(state.get("skipped_samples", 0))
        self.mismatched_shards |= set(state.get("checksum_mismatch_shards", ()))  # facts about files: keep both


    def _load_packed_position(self, state: dict) -> None:
        epochs, cursors, next_worker = (state.get(k) for k in ("worker_epochs", "worker_consumed_items",
                                                               "next_worker"))
        W = self.num_workers
        valid = (isinstance(epochs, list) and isinstance(cursors, list) and len(epochs) == len(cursors) == W
                 and isinstance(next_worker, int) and 0 <= next_worker < W
                 and all(isinstance(e, int) and e >= 0 for e in epochs)
                 and all(isinstance(c, int) and 0 <= c <= len(self.worker_items(e, w))
                         for w, (e, c) in enumerate(zip(epochs, cursors))))
        if not valid:
            raise LoaderStateError(f"packed loader state worker_epochs={epochs!r}, "
                                   f"worker_consumed_items={cursors!r}, next_worker={next_worker!r} "
                                   f"is not a position of {W} workers; the state is corrupt")
        self.worker_epochs, self.worker_cursors, self.next_worker = list(epochs), list(cursors), next_worker


def build_loader(data_cfg: DataConfig, split: str, context_len: int, micro_batch_size: int,
                 dp_rank: int = 0, dp_size: int = 1, seed: int = 0) -> ShardLoader:
    """The loader of INTERFACES.md; see ShardLoader."""
    return ShardLoader(data_cfg, split, context_len, micro_batch_size, dp_rank, dp_size, seed)
