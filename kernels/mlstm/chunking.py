"""The chunk size of the chunkwise mLSTM: one rule, used by every backend when chunk_size="auto".

The chunk size L trades two costs per token and head (DESIGN.md section 3, chunkwise form): the
intra-chunk products grow with L (about 2 (L/2 + T/2) (4 Dqk + 4 Dv) MMA FLOPs in the Triton
kernels, each product once per chunk), while the fp32 state stored at every chunk boundary and
handed to five kernels costs about 24 Dqk Dv / L bytes. The rule takes, per head dim, the L in
[64, 1024] with the lowest roofline bound max(FLOPs / 989 TFLOP/s, bytes / 3.35 TB/s) (H100 SXM
datasheet) whose kernels compile for sm_90 without register spills, from the counts of
bench/kernel_work.py: `python bench/kernel_work.py --derive-auto` prints AUTO_CHUNK below (the
per-chunk lines are in bench/RESULTS.md). At every shipped head dim (64 to 512) the kernels are
bound by bytes at every L, so the largest chunk wins: 1024, the chunk the paper's Prot-xLSTM code
ran. A head dim between table entries takes the entry of the next power of two (the kernels'
tiles are powers of two). A chunk longer than the sequence only adds padding, so L never exceeds
S rounded up to a power of two (at least 16, the smallest tile tl.dot takes).
"""

AUTO = "auto"
# head dim (max of Dqk, Dv, rounded up to a power of two) -> chunk; bench/kernel_work.py --derive-auto
AUTO_CHUNK = {64: 1024, 128: 1024, 256: 1024, 512: 1024}
MIN_CHUNK_FOR_SHORT_SEQUENCES = 16


def _next_power_of_2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def choose_chunk_size(Dqk: int, Dv: int, S: int = None) -> int:
    """The chunk size of chunk_size="auto" for head dims (Dqk, Dv) and sequence length S."""
    dims = sorted(AUTO_CHUNK)
    dim = min(max(_next_power_of_2(max(Dqk, Dv)), dims[0]), dims[-1])
    L = AUTO_CHUNK[dim]
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
