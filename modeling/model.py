"""XLSTMModel and `build_model`: embedding -> stack of blocks -> final norm -> LM/MLM head."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modeling.config import ModelConfig
from modeling.directions import (
    CausalBlock, RCSharedBlock, ReversedBlock, WeightTiedBidirectionalBlock, no_step,
)
from modeling.dna_rc import complement_table, reverse_complement_ids, reverse_complement_logits
from modeling.documents import DocumentLayout, check_document_starts
from modeling.errors import ContextParallelError
from modeling.layers import LayerNorm, small_init_
from modeling.mlstm_block import MLSTMBlock
from modeling.slstm_block import SLSTMBlock


class RCTable(nn.Module):
    """A (V, d) token table built from a (V, d/2) half: row v = [E[v], flip(E[comp v])].

    Then flip_channels(row v) = row comp(v): as an embedding it maps RC(ids) to RC(hidden); as
    an output projection it maps RC(hidden) to complemented, flipped logits."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.half_weight = nn.Parameter(torch.empty(vocab_size, d_model // 2))
        self.register_buffer("comp", complement_table(vocab_size), persistent=False)
        small_init_(self.half_weight, d_model)

    def table(self) -> torch.Tensor:
        return torch.cat([self.half_weight, self.half_weight[self.comp].flip(-1)], dim=-1)


class RCSymmetricNorm(nn.Module):
    """LayerNorm whose weight is channel-flip symmetric ([w, flip(w)]), so it commutes with RC."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.half_weight = nn.Parameter(torch.ones(d_model // 2))

    def forward(self, x):
        weight = torch.cat([self.half_weight, self.half_weight.flip(0)])
        return F.layer_norm(x, (x.shape[-1],), weight=weight, eps=self.eps)


class XLSTMModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, V = cfg.d_model, cfg.vocab_size
        self.rc_shared = cfg.rc_mode == "param_sharing"
        if self.rc_shared:
            self.embedding = RCTable(V, d)
            self.final_norm = RCSymmetricNorm(d, cfg.norm_eps)
            self.head = None if cfg.tie_embeddings else RCTable(V, d)
        else:
            self.embedding = nn.Embedding(V, d)
            small_init_(self.embedding.weight, d)
            self.final_norm = LayerNorm(d, cfg.norm_eps, cfg.norm_weight_offset)
            self.head = None if cfg.tie_embeddings else nn.Linear(d, V, bias=False)
            if self.head is not None:
                small_init_(self.head.weight, d)
        self.sequence_index_embedding = (
            nn.Embedding(cfg.num_sequence_index, d) if cfg.num_sequence_index > 0 else None)
        if self.sequence_index_embedding is not None:
            small_init_(self.sequence_index_embedding.weight, d)
        self.blocks = nn.ModuleList(self._wrap(i, self._block(i)) for i in range(cfg.num_blocks))

    def _block(self, index: int) -> nn.Module:
        return SLSTMBlock(self.cfg) if index in self.cfg.slstm_positions else MLSTMBlock(self.cfg)

    def _wrap(self, index: int, block: nn.Module) -> nn.Module:
        if self.rc_shared:
            return RCSharedBlock(block)
        if self.cfg.bidirectional == "weight_tied":
            return WeightTiedBidirectionalBlock(block, self.cfg.bidirectional_residual == "whole_block")
        if self.cfg.bidirectional == "alternating" and self.cfg.reverses_block(index):
            return ReversedBlock(block)
        return CausalBlock(block)

    # -- pieces ----------------------------------------------------------------------------------
    def _embed(self, input_ids, sequence_index, documents):
        if self.rc_shared:
            x = F.embedding(input_ids, self.embedding.table())
        else:
            x = self.embedding(input_ids)
        if self.sequence_index_embedding is not None:
            if sequence_index is None:       # running count of <cls> in the document, from 0
                sequence_index = documents.running_count(input_ids == self.cfg.cls_token_id) - 1
            idx = sequence_index.clamp(0, self.cfg.num_sequence_index - 1)
            x = x + self.sequence_index_embedding(idx)
        return x

    def _project(self, hidden):
        if self.rc_shared:
            weight = (self.embedding if self.head is None else self.head).table()
        else:
            weight = self.embedding.weight if self.head is None else self.head.weight
        return F.linear(hidden, weight)

    def _positions(self, position_ids, documents):
        """(positions, reversed_positions), clamped: the RoPE positions of the left-to-right pass
        and those of the right-to-left passes in flipped order (None for a causal stack).
        Without position_ids every document counts from 0 (the global index under CP when the
        row is one document)."""
        cfg = self.cfg
        if position_ids is None:
            position_ids = documents.since_start
        positions = position_ids.clamp(0, cfg.max_position_id)
        if self.rc_shared:                       # the RC strand's own left-to-right index
            length = documents.since_start + documents.to_end + 1
            reversed_positions = (length - 1 - position_ids).flip(1)
        elif cfg.bidirectional == "none":
            return positions, None
        elif cfg.reversed_positions == "flipped_index":
            # 0..L-1 along each flipped document (the global flipped index for one document)
            reversed_positions = documents.to_end.flip(1)
        else:                                    # every token keeps its own position
            reversed_positions = position_ids.flip(1)
        return positions, reversed_positions.clamp(0, cfg.max_position_id)

    def _layout(self, input_ids, document_starts, cp_group) -> DocumentLayout:
        check_document_starts(document_starts, input_ids)
        B, S = input_ids.shape
        return DocumentLayout(document_starts, B, S, cp_group, self.cfg.conv_kernel_size, input_ids.device)

    def _trunk(self, input_ids, position_ids, cp_group, sequence_index, documents, rc_half=False):
        positions, reversed_positions = self._positions(position_ids, documents)
        x = self._embed(input_ids, sequence_index, documents)
        resets = documents.block_resets()
        for block in self.blocks:
            x = block(x, positions, cp_group, reversed_positions, resets, rc_half=rc_half)
        return self.final_norm(x)

    # -- public API ------------------------------------------------------------------------------
    def forward(self, input_ids, position_ids=None, return_hidden=False, cp_group=None,
                sequence_index=None, document_starts=None):
        """input_ids (B, S) long -> logits (B, S, V), or the final normed hidden (B, S, d).

        position_ids (B, S): RoPE positions from the data (clamped at max_position_id); None =
        0..S-1 per document (offset by rank * S under context parallelism, where input_ids is
        this rank's contiguous slice). document_starts (B, S) bool: packed rows, True at each
        document's first token; every recurrence (mLSTM, sLSTM, conv, both directions) resets
        there, so each document gives what it gives alone. rc_mode=post_hoc averages the
        predictions on x and RC(x); rc_mode=param_sharing_halves sums them (official RC-PS
        head) and its hidden is the official [forward half | RC half], (B, S, 2 d)."""
        whole_sequence_rc = self.cfg.rc_mode in ("post_hoc", "param_sharing_halves")
        if whole_sequence_rc and cp_group is not None:
            raise ContextParallelError(
                f"rc_mode={self.cfg.rc_mode} needs the whole sequence on one rank (it runs RC(x)); "
                "use context_parallel_size 1 or rc_mode=param_sharing")
        documents = self._layout(input_ids, document_starts, cp_group)
        if not whole_sequence_rc:
            hidden = self._trunk(input_ids, position_ids, cp_group, sequence_index, documents)
            return hidden if return_hidden else self._project(hidden)
        rc_ids = reverse_complement_ids(input_ids, self.cfg.vocab_size)
        rc_documents = documents.flipped()
        fwd = self._trunk(input_ids, position_ids, None, sequence_index, documents)
        if self.cfg.rc_mode == "param_sharing_halves":
            # the RC half runs the shared trunk on the RC strand in its own order (positions 0..L-1)
            bwd = self._trunk(rc_ids, None, None, None, rc_documents, rc_half=True)
            if return_hidden:
                return torch.cat([fwd, bwd.flip(1).flip(-1)], dim=-1)
            return self._project(fwd) + reverse_complement_logits(self._project(bwd))
        rc_pos = None if position_ids is None else position_ids.flip(1)
        bwd = self._trunk(rc_ids, rc_pos, None, None, rc_documents)
        if return_hidden:
            return 0.5 * (fwd + bwd.flip(1))
        return 0.5 * (self._project(fwd) + reverse_complement_logits(self._project(bwd)))

    def _check_step(self):
        if self.cfg.rc_mode != "none":
            no_step(f"reverse-complement ({self.cfg.rc_mode})")
        if self.cfg.bidirectional != "none":
            no_step(f"bidirectional ({self.cfg.bidirectional})")

    def init_state(self, batch_size: int, device=None) -> dict:
        """Constant-size recurrent state: per block (mLSTM C, n, m or sLSTM h, c, n, m; conv
        buffer), the next position and the sequence-index counter."""
        self._check_step()
        if device is None:
            device = self.embedding.weight.device
        dtype = self.embedding.weight.dtype
        return {
            "blocks": [b.init_state(batch_size, device, dtype) for b in self.blocks],
            "position": torch.zeros(batch_size, dtype=torch.long, device=device),
            "num_cls": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def step(self, token_ids, state: dict, position_ids=None, sequence_index=None):
        """token_ids (B,) -> (logits (B, V), new state). position_ids (B,) overrides the running
        position (as in training data where positions restart at each sequence)."""
        self._check_step()
        pos = state["position"] if position_ids is None else position_ids
        pos = pos.clamp(0, self.cfg.max_position_id)
        num_cls = state["num_cls"] + (token_ids == self.cfg.cls_token_id).long()
        x = self.embedding(token_ids)
        if self.sequence_index_embedding is not None:
            idx = num_cls - 1 if sequence_index is None else sequence_index
            x = x + self.sequence_index_embedding(idx.clamp(0, self.cfg.num_sequence_index - 1))
        new_blocks = []
        for block, block_state in zip(self.blocks, state["blocks"]):
            x, block_state = block.step(x, block_state, pos)
            new_blocks.append(block_state)
        logits = self._project(self.final_norm(x))
        return logits, {"blocks": new_blocks, "position": pos + 1, "num_cls": num_cls}


def build_model(cfg: ModelConfig) -> XLSTMModel:
    """The one way to build a model from a ModelConfig (dict accepted too)."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    cfg.validate()
    return XLSTMModel(cfg)
