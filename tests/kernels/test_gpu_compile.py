"""CI gate on what the GPU compiler makes of the Triton kernels, without a GPU
(bench/gpu_compile.py): at the launches the public op makes for the shipped protein configs
(every curriculum stage), compiled for sm_90, every kernel fits its shared memory, spills no
register, and runs every dot on bf16 wgmma; the bytes handed to the kernels per token of a
forward+backward stay within 2.5x of the q, k, v, h + gradients floor. The interpreter accepts
programs a GPU compile rejects, so this is also what catches GPU-only breakage here.

Runs in a child process: under TRITON_INTERPRET=1 (tests/conftest.py) the kernels are
interpreter objects and cannot be compiled.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KERNELS = {"_tile_log_forget_kernel", "_chunk_states_kernel", "_chunk_outputs_kernel", "_chunk_dq_kernel",
           "_chunk_state_grads_kernel", "_chunk_dkv_kernel", "_gate_grads_kernel"}
WITHOUT_DOTS = {"_tile_log_forget_kernel", "_gate_grads_kernel"}


@pytest.mark.timeout(300)
def test_protein_kernels_compile_for_hopper_within_limits_on_bf16_tensor_cores(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "gpu_compile.json"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "gpu_compile.py"), "--models", "prot_xlstm_26m,prot_xlstm_102m",
         "--archs", "90", "--memory-models", "", "--check", "--json", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert not report["problems"]
    by_model = {}
    for c in report["compiles"]:
        for model in c["models"]:
            by_model.setdefault(model, set()).add(c["kernel"])
        assert c["ok"] and c["arch"] == 90, c
        assert 0 < c["shared"] <= c["shared_limit"], c
        assert c["spill_bytes"] == 0 and c["registers"] > 0, c
        assert all(tuple(dot) == ("wgmma", "bf16") for dot in c["dots"]), c
        assert bool(c["dots"]) == (c["kernel"] not in WITHOUT_DOTS), c
    assert by_model == {"prot_xlstm_26m": KERNELS, "prot_xlstm_102m": KERNELS}
    ratios = {(b["model"], b["context"]): b["handed"] / b["floor"] for b in report["bytes_per_token"]}
    assert len(ratios) == 16 and max(ratios.values()) <= 2.5, ratios
