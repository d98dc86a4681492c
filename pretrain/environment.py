"""What this process runs on: versions, GPUs, and combinations known not to work.

`bioxlstm env` prints the report; every run appends it to `<run>/environment.jsonl` at start (a
resumed run on another node or another install leaves a second record, so a result can be
traced to the software that produced it); the launchers' preflight refuses a combination known
to fail (`known_problems`) with one line before anything is started or queued.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

ENVIRONMENT_NAME = "environment.jsonl"
PACKAGES = ("torch", "triton", "deepspeed", "megatron-core", "numpy", "webdataset", "submitit")
SUPPORTED_TRITON = ((3, 6), (3, 10))        # [low, high): pyproject.toml's range
MIN_KERNEL_CAPABILITY = (8, 0)              # the kernels' bf16 tl.dot needs tensor cores of sm_80+
# Triton before 3.7: its CPU interpreter calls int() on one-element numpy arrays, which
# numpy 2.4 refuses (issue 25), so TRITON_INTERPRET=1 fails at the first kernel.
INTERPRETER_FIXED_TRITON = (3, 7)
INTERPRETER_BREAKING_NUMPY = (2, 4)


def _version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _release(version: Optional[str]) -> tuple:
    """(major, minor, ...) of a version string, local and pre-release parts dropped."""
    from packaging.version import Version

    return Version(version).release if version else ()


def kernel_check(device: str) -> str:
    """Compile and run the Triton mLSTM kernels on `device` ("cuda:N", or "cpu" under
    TRITON_INTERPRET=1) on a small case, forward and backward, against the float64 reference
    (bf16 on a GPU as in training: 2e-2; fp32 in the interpreter: 1e-4). A verdict line."""
    import torch

    from kernels import mlstm_chunkwise

    started = time.monotonic()
    dtype, tolerance = (torch.bfloat16, 2e-2) if device.startswith("cuda") else (torch.float32, 1e-4)
    generator = torch.Generator().manual_seed(int(time.time()))
    shapes = [(1, 2, 128, 64)] * 3 + [(1, 2, 128)] * 2
    inputs = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    # both backends see the same values: q, k, v as representable in `dtype`, gates in fp32
    inputs = [x.to(dtype if n < 3 else torch.float32).double() for n, x in enumerate(inputs)]
    cotangent = torch.randn(shapes[2], generator=generator, dtype=torch.float64).to(device)
    try:
        results = []
        for backend, qkv_dtype, gate_dtype in (("triton", dtype, torch.float32),
                                               ("reference", torch.float64, torch.float64)):
            leaves = [x.to(device, qkv_dtype if n < 3 else gate_dtype).detach().clone().requires_grad_()
                      for n, x in enumerate(inputs)]
            h = mlstm_chunkwise(*leaves, backend=backend, chunk_size=64)
            (h.double() * cotangent).sum().backward()
            results.append([h.detach().double().cpu()] + [x.grad.double().cpu() for x in leaves])
        for name, got, want in zip(("h", "dq", "dk", "dv", "di", "df"), *results):
            error = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
            if not error <= tolerance:
                return f"FAILED: {name} differs from the float64 reference by {error:.1e} (relative, > {tolerance})"
    except Exception as error:  # noqa: BLE001 - the verdict is the report's content
        first = (str(error).strip().splitlines() or [""])[0]
        return f"FAILED: {type(error).__name__}: {first[:200]}"
    return (f"compile and run: forward+backward match the float64 reference "
            f"({'bf16' if dtype == torch.bfloat16 else 'fp32'}, {time.monotonic() - started:.1f} s)")


def gpu_report(check_kernels: bool = False) -> list[dict]:
    """The CUDA devices torch sees, and whether the Triton kernels compile and run on each
    (`check_kernels`; else only whether the device is new enough for them)."""
    import torch

    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(index)
        if (major, minor) < MIN_KERNEL_CAPABILITY:
            verdict = "not supported: the kernels need sm_80 or newer (bf16 tensor cores)"
        else:
            verdict = kernel_check(f"cuda:{index}") if check_kernels else "sm_80 or newer (not compiled here)"
        gpus.append({"index": index, "name": torch.cuda.get_device_name(index), "capability": f"sm_{major}{minor}",
                     "kernels": verdict})
    return gpus


def environment_report(check_kernels: bool = False) -> dict:
    """Versions, GPUs and the Triton kernels' verdict, as a JSON-ready dict. Imports torch.
    `check_kernels` compiles and runs them on each GPU, or in the CPU interpreter when there is
    none and TRITON_INTERPRET=1 (a few seconds; `bioxlstm env` does, a run's start does not)."""
    import torch

    interpreted = None
    if check_kernels and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1":
        interpreted = kernel_check("cpu")

    nccl = None
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "bio-xlstm-pretrain": _version("bio-xlstm-pretrain"),
        "torch_cuda": torch.version.cuda,
        "nccl": nccl,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
        "gpus": gpu_report(check_kernels),
        "kernels_interpreted": interpreted,
        "problems": known_problems(),
    }


def format_report(report: dict) -> str:
    """The report as `bioxlstm env` prints it: one `name: value` line per item."""
    packages = report["packages"]
    lines = [f"python: {report['python']} ({report['platform']})",
             f"bio-xlstm-pretrain: {report['bio-xlstm-pretrain'] or 'not installed (source checkout)'}",
             f"torch: {packages['torch']} (CUDA {report['torch_cuda'] or 'none: CPU build'}, "
             f"NCCL {report['nccl'] or 'none'})"]
    lines += [f"{name}: {packages[name] or 'not installed'}" for name in PACKAGES if name != "torch"]
    if report["gpus"]:
        for gpu in report["gpus"]:
            lines.append(f"gpu {gpu['index']}: {gpu['name']} ({gpu['capability']}); Triton kernels: {gpu['kernels']}")
    else:
        if report.get("kernels_interpreted"):
            kernels = f"in the CPU interpreter (TRITON_INTERPRET=1): {report['kernels_interpreted']}"
        else:
            kernels = ("not checked (no GPU; `python bench/gpu_compile.py --archs 90 --check` compiles them for "
                       "sm_90 without one, TRITON_INTERPRET=1 runs them on the CPU)")
        lines.append(f"gpus: none; Triton kernels: {kernels}")
    lines += [f"problem: {problem}" for problem in report["problems"]] or ["problems: none known"]
    return "\n".join(lines)


def known_problems(versions: Optional[dict] = None, environ: Optional[dict] = None,
                   torch_requires: Optional[list] = None) -> list[str]:
    """Combinations known not to work, one line each (empty when none). Arguments default to
    this process's installed versions, environment and torch's declared requirements."""
    from packaging.requirements import Requirement

    versions = {name: _version(name) for name in ("torch", "triton", "numpy")} if versions is None else versions
    environ = os.environ if environ is None else environ
    if torch_requires is None:
        torch_requires = (metadata.requires("torch") or []) if versions.get("torch") else []
    problems = []
    triton, numpy = versions.get("triton"), versions.get("numpy")
    if triton is None:
        problems.append("triton is not installed; install it: pip install 'triton>=3.6,<3.10'")
        return problems
    low, high = SUPPORTED_TRITON
    if not low <= _release(triton)[:2] < high:
        problems.append(f"triton {triton} is outside the supported range >=3.6,<3.10; install a Triton in it "
                        "(the one your torch wheel requires)")
    for text in torch_requires:
        requirement = Requirement(text)
        if requirement.name == "triton" and (requirement.marker is None or requirement.marker.evaluate()):
            if not requirement.specifier.contains(triton, prereleases=True):
                problems.append(f"torch {versions.get('torch')} requires {text.split(';')[0].strip()} but triton "
                                f"{triton} is installed; reinstall the Triton your torch wheel requires "
                                f"(pip install '{requirement.name}{requirement.specifier}')")
    if (environ.get("TRITON_INTERPRET") == "1" and numpy and _release(triton)[:2] < INTERPRETER_FIXED_TRITON
            and _release(numpy)[:2] >= INTERPRETER_BREAKING_NUMPY):
        problems.append(f"TRITON_INTERPRET=1 with triton {triton} and numpy {numpy}: Triton's CPU interpreter "
                        "before 3.7 fails on numpy >= 2.4; use triton>=3.7 or numpy<2.4 for CPU runs "
                        "(GPU runs, without TRITON_INTERPRET, are fine)")
    return problems


def write_environment_report(run_dir: str | Path, report: Optional[dict] = None) -> Path:
    """Append this start's report to `<run_dir>/environment.jsonl` (one JSON line per start);
    a known problem is also printed as a warning (the launchers refuse it before starting)."""
    report = report or environment_report()
    for problem in report["problems"]:
        print(f"warning: {problem}", file=sys.stderr, flush=True)
    path = Path(run_dir) / ENVIRONMENT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(report, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_environment_reports(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / ENVIRONMENT_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_environment(as_json: bool = False, check_kernels: bool = True) -> int:
    """`bioxlstm env`: the report on stdout; exit 1 when a known problem was found or the
    kernel check failed."""
    report = environment_report(check_kernels)
    print(json.dumps(report, indent=2, sort_keys=True) if as_json else format_report(report))
    sys.stdout.flush()
    verdicts = [gpu["kernels"] for gpu in report["gpus"]] + [report["kernels_interpreted"] or ""]
    return 1 if report["problems"] or any(v.startswith("FAILED") for v in verdicts) else 0
