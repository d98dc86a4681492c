"""The chunk size of the chunkwise mLSTM: one rule, used by every backend when chunk_size="auto".

The chunk size L trades two costs per token and head (DESIGN.md section 3, chunkwise form):
the intra-chunk quadratic part costs about L (Dqk + Dv) FLOPs, the inter-chunk part (reading
and updating the state) 4 Dqk Dv, and every chunk boundary stores a (Dqk, Dv) fp32 state,
4 Dqk Dv / L bytes per token. The rule takes the L at which the two FLOP terms are equal,
L = 4 Dqk Dv / (Dqk + Dv) (twice the head dim when Dqk = Dv), rounded up to a power of two and
clamped to [64, 1024]: head dim 512 -> 1024 (the chunk the paper's Prot-xLSTM code ran),
256 -> 512, 128 -> 256. There the stored states cost half the bf16 q, k, v, h bytes of a token.
A chunk longer than the sequence only adds padding, so L never exceeds S rounded up to a power
of two (at least 16, the smallest tile tl.dot takes).
"""

AUTO = "auto"
MIN_AUTO_CHUNK = 64
MAX_AUTO_CHUNK = 1024
MIN_CHUNK_FOR_SHORT_SEQUENCES = 16


def _next_power_of_2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def choose_chunk_size(Dqk: int, Dv: int, S: int = None) -> int:
    """The chunk size of chunk_size="auto" for head dims (Dqk, Dv) and sequence length S."""
    balanced = _next_power_of_2(-(-4 * Dqk * Dv // (Dqk + Dv)))
    L = min(MAX_AUTO_CHUNK, max(MIN_AUTO_CHUNK, balanced))
    if S is not None:
        L = min(L, max(MIN_CHUNK_FOR_SHORT_SEQUENCES, _next_power_of_2(S)))
    return L


def is_valid_chunk_size(chunk_size) -> bool:
    """"auto" or a positive int (bool is not an int here)."""
    if chunk_size == AUTO and isinstance(chunk_size, str):
        return True
    return isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1


def resolve_chunk_size(chunk_size, Dqk: int, Dv: int, S: int) -> int:
    """An int chunk size as given, or the rule's choice for "auto" (validated by the caller)."""
    if isinstance(chunk_size, str) and chunk_size == AUTO:
        return choose_chunk_size(Dqk, Dv, S)
    return chunk_size
