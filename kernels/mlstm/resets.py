"""State resets inside a sequence: packed documents that must not see each other (DESIGN.md
section 9).

`resets` (B, S) bool, the same for every head: True at t means the state entering t is
replaced by the fresh state C = 0, n = 0, m = 0, so t and everything up to the next reset is
exactly the sequence that begins at t (each packed document run alone, the eps term of the
normalizer included, since the fresh m is 0, not -inf). Token t's own gates apply as usual:
m_t = max(log f_t + 0, i_t).

In the unrolled form this means two things, and every backend expresses exactly these:
- a source s reaches a row t only inside one document (no reset in (s, t]); the log weight is
  b_t - b_s + i_s with b the cumulative log forget *restarted* at each reset, so no -inf is ever
  subtracted from -inf;
- the state entering the sequence (initial state) reaches only the first document; every later
  document instead has the fresh state as its entering state, whose only trace is a stabilizer
  candidate b_t + 0 (its C and n are zero).
"""

import torch


def document_index(resets: torch.Tensor) -> torch.Tensor:
    """Number of resets at or before each position along the last dim (0 = the document that
    the entering state belongs to)."""
    return torch.cumsum(resets.to(torch.int32), dim=-1)


def restarted_cumsum(log_f: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """Inclusive cumulative sum of `log_f` along the last dim, restarted at every reset (the
    reset position's own value is the first term). `resets` broadcasts against `log_f`.

    A masked (S, S) sum rather than "cumsum minus the cumsum at the last reset": the gradient
    to a position in another document is then exactly zero, not a rounding residue. Callers use
    it on chunks (S = chunk size) or on the quadratic reference, where S x S is already paid.
    """
    doc = document_index(resets)
    same = doc[..., :, None] == doc[..., None, :]
    causal = torch.ones(log_f.shape[-1], log_f.shape[-1], dtype=torch.bool, device=log_f.device).tril()
    weights = (same & causal).to(log_f.dtype)
    return (weights @ log_f[..., None])[..., 0]


def per_head(resets, like: torch.Tensor):
    """(B, S) resets -> (B, 1, S), broadcastable against (B, H, S) gates; None stays None."""
    return None if resets is None else resets[:, None, :]


def reset_kwargs(resets) -> dict:
    """`resets` as a keyword for a backend call only when given, so a backend registered with
    the older signature (no `resets`) keeps working on unpacked inputs."""
    return {} if resets is None else {"resets": resets}
