"""Next-token sampling and the recurrent generation loop.

Generation runs the model in step mode (`model.init_state` / `model.step`): one token in, one
distribution out, a state whose size never depends on how many tokens came before. That is
what keeps generation memory constant in the generated length (DESIGN.md section 6), unlike a
Transformer's growing KV cache. The prompt is fed through the same step loop, so the first
sampled token sees exactly the state the full forward would have built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch


@dataclass(frozen=True)
class SamplingSettings:
    """How to turn logits into a token. temperature 0 means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: must be >= 1 or unset")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1] or unset")


def filter_logits(logits: torch.Tensor, settings: SamplingSettings,
                  banned_ids: Sequence[int] = ()) -> torch.Tensor:
    """Logits (B, V) -> logits with temperature applied and everything outside top-k / the top-p
    nucleus (and `banned_ids`) set to -inf. The most likely allowed token always survives."""
    logits = logits.float().clone()
    if banned_ids:
        logits[:, list(banned_ids)] = float("-inf")
    if settings.temperature > 0:
        logits = logits / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.shape[-1]:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p is not None and settings.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= settings.top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_token(logits: torch.Tensor, settings: SamplingSettings,
                      generator: torch.Generator | None = None,
                      banned_ids: Sequence[int] = ()) -> torch.Tensor:
    """Logits (B, V) -> sampled token ids (B,) long."""
    filtered = filter_logits(logits, settings, banned_ids)
    if settings.temperature == 0:
        return filtered.argmax(dim=-1)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def state_nbytes(state) -> int:
    """Bytes held by a recurrent state (any nesting of tensors in tuples, lists and dicts)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(value) for value in state)
    return 0


def _clone_state(state):
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {key: _clone_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_clone_state(value) for value in state)
    return state


@dataclass
class StepTrace:
    """What one generation produced: the new tokens, the logits the model gave at every sampled
    position (for tests and scoring), and the state size after each step."""

    token_ids: list[int]
    step_logits: list[torch.Tensor]
    state_bytes: list[int]
    stopped_by: int | None


PositionFn = Callable[[int, int], int]
"""(position of the previous token, token just emitted) -> position of the next token."""


def _sequential_positions(previous_position: int, token: int) -> int:
    return previous_position + 1


class RecurrentSession:
    """One sequence in step mode: feed tokens (with their positions), sample from the last
    logits. The state is all the model remembers, so its size is the memory cost."""

    def __init__(self, model, device: torch.device | str = "cpu"):
        self.model = model
        self.device = device
        self.state = model.init_state(1, device=device)
        self.logits: torch.Tensor | None = None
        self.fed = 0

    @torch.no_grad()
    def feed(self, token: int, position: int) -> torch.Tensor:
        token_ids = torch.tensor([int(token)], dtype=torch.long, device=self.device)
        position_ids = torch.tensor([int(position)], dtype=torch.long, device=self.device)
        self.logits, self.state = self.model.step(token_ids, self.state, position_ids=position_ids)
        self.fed += 1
        return self.logits

    def feed_all(self, tokens: Sequence[int], positions: Sequence[int]) -> None:
        if len(tokens) != len(positions):
            raise ValueError(f"{len(positions)} positions for {len(tokens)} tokens")
        for token, position in zip(tokens, positions):
            self.feed(token, position)

    def fork(self) -> "RecurrentSession":
        """An independent copy: sampling from it leaves this session's state untouched."""
        twin = RecurrentSession.__new__(RecurrentSession)
        twin.model, twin.device, twin.fed = self.model, self.device, self.fed
        twin.state = _clone_state(self.state)
        twin.logits = None if self.logits is None else self.logits.clone()
        return twin

    @property
    def state_bytes(self) -> int:
        return state_nbytes(self.state)

    def sample(self, max_new_tokens: int, settings: SamplingSettings, generator: torch.Generator | None,
               positions: Callable[[int, int], int], stop_ids: Iterable[int] = (),
               banned_ids: Sequence[int] = (), keep_logits: bool = False) -> StepTrace:
        """Sample up to `max_new_tokens`; the k-th sampled token (k = 0, 1, ...) is fed back at
        position `positions(k, token)`. A sampled stop token ends the run and is not fed."""
        if self.logits is None:
            raise ValueError("feed at least one token (e.g. the start token) before sampling")
        stop_ids = set(int(t) for t in stop_ids)
        trace = StepTrace([], [], [self.state_bytes], None)
        for k in range(max_new_tokens):
            if keep_logits:
                trace.step_logits.append(self.logits[0].detach().float().clone())
            token = int(sample_next_token(self.logits, settings, generator, banned_ids)[0])
            trace.token_ids.append(token)
            if token in stop_ids:
                trace.stopped_by = token
                break
            self.feed(token, positions(k, token))
            trace.state_bytes.append(self.state_bytes)
        return trace


def generate_recurrent(
    model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    prompt_positions: Sequence[int] | None = None,
    next_position: PositionFn = _sequential_positions,
    stop_ids: Iterable[int] = (),
    banned_ids: Sequence[int] = (),
    keep_logits: bool = False,
    device: torch.device | str = "cpu",
) -> StepTrace:
    """Feed `prompt_ids` through `model.step`, then sample up to `max_new_tokens` tokens.

    Stops early when a token in `stop_ids` is sampled (it is included in the result). Every
    step passes an explicit position id (`prompt_positions`, then `next_position`), so models
    with data-given positions (protein RoPE) see the same positions as in training.
    """
    if len(prompt_ids) == 0:
        raise ValueError("generation needs a prompt of at least one token (e.g. the start token)")
    positions = list(prompt_positions) if prompt_positions is not None else list(range(len(prompt_ids)))
    session = RecurrentSession(model, device)
    session.feed_all(prompt_ids, positions)
    last_position = [positions[-1]]

    def position_of(k: int, token: int) -> int:
        last_position[0] = next_position(last_position[0], token)
        return last_position[0]

    return session.sample(max_new_tokens, settings, generator, position_of, stop_ids, banned_ids, keep_logits)


def expand_state(state, count: int):
    """A batch-1 recurrent state repeated `count` times along the batch dimension (dim 0 of every
    tensor), so one primed context serves a whole batch of samples."""
    if isinstance(state, torch.Tensor):
        if state.dim() == 0 or state.shape[0] != 1:
            raise ValueError(f"expected a batch-1 state tensor, got shape {tuple(state.shape)}")
        return state.expand(count, *state.shape[1:]).clone()
    if isinstance(state, dict):
        return {key: expand_state(value, count) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(expand_state(value, count) for value in state)
    return state


@torch.no_grad()
def sample_batch(model, state, logits: torch.Tensor, last_position: int, count: int, max_new_tokens: int,
                 settings: SamplingSettings, generator: torch.Generator | None,
                 next_position: PositionFn = _sequential_positions, stop_ids: Iterable[int] = (),
                 banned_ids: Sequence[int] = ()) -> list[tuple[list[int], int | None]]:
    """`count` continuations of one primed context, stepped together as a batch.

    `state` and `logits` (1, V) are what the context left (batch 1; not modified);
    `last_position` is the context's last position id. Returns per row (sampled tokens without
    the stop token, the stop token or None). A row that has stopped is still stepped (the batch
    moves together) but its tokens are ignored: every row sees exactly the tokens it sampled.
    """
    stop_set = {int(t) for t in stop_ids}
    device = logits.device
    state = expand_state(state, count)
    logits = logits.expand(count, -1)
    positions = [int(last_position)] * count
    rows: list[list[int]] = [[] for _ in range(count)]
    stopped: list[int | None] = [None] * count
    active = list(range(count))
    for _ in range(max_new_tokens):
        tokens = sample_next_token(logits, settings, generator, banned_ids).tolist()
        still = []
        for row in active:
            token = int(tokens[row])
            if token in stop_set:
                stopped[row] = token
            else:
                rows[row].append(token)
                positions[row] = next_position(positions[row], token)
                still.append(row)
        active = still
        if not active:
            break
        step_tokens = torch.tensor(tokens, dtype=torch.long, device=device)
        step_positions = torch.tensor(positions, dtype=torch.long, device=device)
        logits, state = model.step(step_tokens, state, position_ids=step_positions)
    return list(zip(rows, stopped))
