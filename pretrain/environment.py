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


def gpu_report() -> list[dict]:
    """The CUDA devices torch sees, and whether the Triton kernels target them."""
    import torch

    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(index)
        supported = (major, minor) >= MIN_KERNEL_CAPABILITY
        gpus.append({"index": index, "name": torch.cuda.get_device_name(index), "capability": f"sm_{major}{minor}",
                     "kernels": "compile (sm_80 or newer)" if supported else
                     "not supported: the kernels need sm_80 or newer (bf16 tensor cores)"})
    return gpus


def environment_report() -> dict:
    """Versions, GPUs and the Triton kernels' verdict, as a JSON-ready dict. Imports torch."""
    import torch

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
        "gpus": gpu_report(),
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
        interpret = report["triton_interpret"] == "1"
        lines.append("gpus: none; Triton kernels: " + ("run in the CPU interpreter (TRITON_INTERPRET=1)" if interpret
                     else "not checked for a GPU (`python bench/gpu_compile.py --archs 90 --check` compiles "
                          "them for sm_90 without one)"))
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
    """Append this start's report to `<run_dir>/environment.jsonl` (one JSON line per start)."""
    path = Path(run_dir) / ENVIRONMENT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(report or environment_report(), sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_environment_reports(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / ENVIRONMENT_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def print_environment(as_json: bool = False) -> int:
    """`bioxlstm env`: the report on stdout; exit 1 when a known problem was found."""
    report = environment_report()
    print(json.dumps(report, indent=2, sort_keys=True) if as_json else format_report(report))
    sys.stdout.flush()
    return 1 if report["problems"] else 0
