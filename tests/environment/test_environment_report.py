"""`bioxlstm env`, its copy in every run directory, and the combinations preflight refuses."""
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from launchers import preflight
from launchers.errors import SoftwareEnvironmentError
from pretrain.environment import ENVIRONMENT_NAME, known_problems, read_environment_reports, write_environment_report

REPO = Path(__file__).resolve().parents[2]
CPU_TORCH_REQUIRES = ["filelock", "typing-extensions>=4.10.0"]
# torch 2.11.0's Linux wheel declares (its METADATA, as PyPI serves it):
CUDA_TORCH_REQUIRES = ["filelock", "triton==3.6.0; platform_system == 'Linux' and platform_machine == 'x86_64'"]


def run_env(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launchers.main", "env", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=120)


def test_bioxlstm_env_names_every_version_and_the_gpus(capsys):
    done = run_env()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    import torch

    assert f"torch: {metadata.version('torch')} (CUDA " in out
    for name in ("triton", "deepspeed", "megatron-core", "numpy"):
        assert f"{name}: {metadata.version(name)}\n" in out
    assert out.startswith(f"python: {sys.version.split()[0]} (")
    if torch.cuda.is_available():
        assert "gpu 0: " in out
    else:
        assert ("gpus: none; Triton kernels: in the CPU interpreter (TRITON_INTERPRET=1): compile and run: "
                "forward+backward match the float64 reference (fp32") in out
    assert out.rstrip().endswith("problems: none known")
    from pretrain.environment import print_environment

    assert print_environment(as_json=True, check_kernels=False) == 0   # the --json form, in this process
    report = json.loads(capsys.readouterr().out)
    assert report["packages"]["deepspeed"] == metadata.version("deepspeed")
    assert report["problems"] == []


def test_the_report_is_appended_to_the_run_directory_at_each_start(tmp_path):
    write_environment_report(tmp_path)
    write_environment_report(tmp_path)                      # a resume: a second record, the first kept
    reports = read_environment_reports(tmp_path)
    assert len(reports) == 2
    assert reports[0]["packages"]["torch"] == metadata.version("torch")
    assert set(reports[0]) >= {"python", "packages", "torch_cuda", "nccl", "gpus", "problems", "host", "time_utc"}
    assert (tmp_path / ENVIRONMENT_NAME).read_text().count("\n") == 2


def test_known_problems():
    good = {"torch": "2.13.0+cpu", "triton": "3.7.1", "numpy": "2.4.6"}
    assert known_problems(good, {"TRITON_INTERPRET": "1"}, CPU_TORCH_REQUIRES) == []
    # the cluster's set: torch 2.11 with its Triton 3.6.0 is fine on GPUs ...
    cluster = {"torch": "2.11.0", "triton": "3.6.0", "numpy": "2.4.6"}
    assert known_problems(cluster, {}, CUDA_TORCH_REQUIRES) == []
    # ... but not for the CPU interpreter with numpy 2.4
    [line] = known_problems(cluster, {"TRITON_INTERPRET": "1"}, CUDA_TORCH_REQUIRES)
    assert "TRITON_INTERPRET=1 with triton 3.6.0 and numpy 2.4.6" in line and "triton>=3.7" in line
    assert known_problems({**cluster, "numpy": "2.3.5"}, {"TRITON_INTERPRET": "1"}, CUDA_TORCH_REQUIRES) == []
    # a Triton other than the one the torch wheel was built with
    [line] = known_problems({**cluster, "triton": "3.7.1"}, {}, CUDA_TORCH_REQUIRES)
    assert line.startswith("torch 2.11.0 requires triton==3.6.0 but triton 3.7.1 is installed")
    # outside the supported range
    [line] = known_problems({"torch": "2.9.0+cpu", "triton": "3.5.1", "numpy": "2.3.5"}, {}, CPU_TORCH_REQUIRES)
    assert "triton 3.5.1 is outside the supported range >=3.6,<3.10" in line
    assert known_problems({**good, "triton": None}, {}, CPU_TORCH_REQUIRES)[0].startswith("triton is not installed")


def test_preflight_refuses_a_known_bad_combination_with_one_line():
    problems = known_problems({"torch": "2.11.0", "triton": "3.7.1", "numpy": "2.4.6"}, {"TRITON_INTERPRET": "1"},
                              CUDA_TORCH_REQUIRES)
    with pytest.raises(SoftwareEnvironmentError) as refused:
        preflight.check_software(problems)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("torch 2.11.0 requires triton==3.6.0")
    assert SoftwareEnvironmentError.user_facing
    preflight.check_software([])                                # nothing known: passes
    preflight.check_software()                                  # this environment (CI's): passes


def test_the_kernel_check_catches_a_kernel_that_is_off(monkeypatch):
    import kernels
    from pretrain.environment import kernel_check

    assert kernel_check("cpu").startswith("compile and run")          # TRITON_INTERPRET=1 (conftest)
    real = kernels.mlstm_chunkwise

    def off_by_a_percent(*args, backend="auto", **kwargs):
        h = real(*args, backend=backend, **kwargs)
        return h * 1.01 if backend == "triton" else h

    monkeypatch.setattr(kernels, "mlstm_chunkwise", off_by_a_percent)
    verdict = kernel_check("cpu")
    assert verdict.startswith("FAILED: h differs from the float64 reference by 1.0e-02"), verdict
