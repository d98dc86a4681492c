"""Shared inputs and comparisons for the mLSTM kernel tests.

Inputs are drawn in the dtype under test and the float64 reference sees exactly those
(rounded) values, so a comparison measures the kernel's arithmetic, not input rounding.
Errors are per tensor: max |x - ref| / max |ref|.
"""

import torch

TENSORS = ("h", "C", "n", "m")
GRADS = ("dq", "dk", "dv", "di", "df", "dC0", "dn0")


def case_id(B, H, S, Dqk, Dv):
    return f"B{B}-H{H}-S{S}-D{Dqk}x{Dv}"


def make_inputs(B, H, S, Dqk, Dv, dtype=torch.float32, gates="moderate", with_state=False):
    """Random q, k, v, gate pre-activations and optionally an initial state.

    gates: "moderate" (i ~ N(0, 1), f ~ N(3, 1): the regime of the paper's init, forget bias
    3..6), "wide" (i ~ N(0, 9), f ~ N(2, 9)), "extreme" (i uniform in [-30, 30],
    f = +-20 + N(0, 1): no-decay and full-forget positions mixed).
    """
    q, k = torch.randn(B, H, S, Dqk), torch.randn(B, H, S, Dqk)
    v = torch.randn(B, H, S, Dv)
    if gates == "moderate":
        i, f = torch.randn(B, H, S), torch.randn(B, H, S) + 3.0
    elif gates == "wide":
        i, f = 3.0 * torch.randn(B, H, S), 3.0 * torch.randn(B, H, S) + 2.0
    elif gates == "extreme":
        i = torch.rand(B, H, S) * 60.0 - 30.0
        f = torch.where(torch.rand(B, H, S) < 0.5, 20.0, -20.0) + torch.randn(B, H, S)
    else:
        raise ValueError(gates)
    inputs = dict(q=q, k=k, v=v, i=i, f=f)
    if with_state:
        inputs.update(C0=torch.randn(B, H, Dqk, Dv), n0=torch.randn(B, H, Dqk), m0=torch.randn(B, H))
    return {name: x.to(dtype) for name, x in inputs.items()}


def _cotangent(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def outputs_and_grads(fn, inputs, dtype=None, loss_on=("h", "C", "n"), **kwargs):
    """Run `fn` with the kernels signature and return h, final state and every input gradient.

    The loss contracts h, C and n (`loss_on`) with fixed random cotangents, so the gradients
    also test the final-state path. `dtype` casts the inputs first (float64 for the reference).
    """
    leaves = {}
    for name in ("q", "k", "v", "i", "f", "C0", "n0"):
        if name in inputs:
            x = inputs[name] if dtype is None else inputs[name].to(dtype)
            leaves[name] = x.detach().clone().requires_grad_()
    state = None
    if "C0" in inputs:
        m0 = inputs["m0"] if dtype is None else inputs["m0"].to(dtype)
        state = (leaves["C0"], leaves["n0"], m0)
    h, (C, n, m) = fn(leaves["q"], leaves["k"], leaves["v"], leaves["i"], leaves["f"],
                      initial_state=state, return_final_state=True, **kwargs)
    outputs = dict(h=h, C=C, n=n)
    loss = sum((outputs[name].double() * _cotangent(outputs[name].shape, seed)).sum()
               for seed, name in enumerate(loss_on, start=1))
    grads = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)  # unused = 0
    result = dict(h=h, C=C, n=n, m=m)
    result.update({"d" + name: g for name, g in zip(leaves, grads)})
    return result


def rel_err(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    scale = ref.abs().max()
    diff = (x - ref).abs().max()
    return (diff / scale).item() if scale > 0 else diff.item()


def assert_close(got, ref, tol, names=None):
    """Every named tensor of `got` within relative error `tol` of `ref`, and finite."""
    names = names or [name for name in (*TENSORS, *GRADS) if name in ref]
    errors = {}
    for name in names:
        assert torch.isfinite(got[name]).all(), f"{name} has NaN/inf"
        assert got[name].shape == ref[name].shape, f"{name}: shape {got[name].shape} != {ref[name].shape}"
        errors[name] = rel_err(got[name], ref[name])
    bad = {name: err for name, err in errors.items() if not err <= tol}
    assert not bad, f"relative errors above {tol:g}: {bad} (all: {errors})"


def resets_from_lengths(lengths_per_row, reset_at_start=False):
    """(B, S) bool resets for rows packed with documents of the given lengths: True at the first
    position of every document after a row's first (and at 0 too with `reset_at_start`, so the
    first document also ignores the entering state)."""
    rows = []
    for lengths in lengths_per_row:
        row = []
        for number, length in enumerate(lengths):
            row.extend([number > 0 or reset_at_start] + [False] * (length - 1))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def documents_alone(fn):
    """A function with the kernels signature that, given `resets`, runs every document of every
    row on its own through `fn` (the entering state only for a row's first document unless a
    reset sits at 0; the fresh state for every other) and stitches the outputs: the ground
    truth that a packed call must equal. Differentiable (documents are slices of the inputs)."""

    def run(q, k, v, i, f, initial_state=None, return_final_state=False, resets=None, **kwargs):
        B, H, S = i.shape
        rows, finals = [], []
        for b in range(B):
            starts = [0] + [t for t in range(1, S) if resets[b, t]] + [S]
            pieces, final = [], None
            for number, (lo, hi) in enumerate(zip(starts, starts[1:])):
                fresh = number > 0 or bool(resets[b, 0])
                state = None if (fresh or initial_state is None) else tuple(x[b:b + 1] for x in initial_state)
                h, final = fn(*(x[b:b + 1, :, lo:hi] for x in (q, k, v, i, f)), initial_state=state,
                              return_final_state=True, **kwargs)
                pieces.append(h)
            rows.append(torch.cat(pieces, dim=2))
            finals.append(final)
        h = torch.cat(rows)
        final = tuple(torch.cat(parts) for parts in zip(*finals))
        return (h, final) if return_final_state else h

    return run
