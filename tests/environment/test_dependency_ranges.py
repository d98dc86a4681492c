"""pyproject.toml declares ranges, constraints.txt the exact versions CI installs; the package
resolves in a cluster's environment (a CUDA torch 2.11 and the Triton 3.6.0 its wheel requires)
without replacing them."""
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10
    tomllib = None

REPO = Path(__file__).resolve().parents[2]
EXIT_NO_INDEX = 3


def declared() -> dict:
    """{name: Requirement} of pyproject.toml's dependencies and extras."""
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [t for extra in project["optional-dependencies"].values() for t in extra]
    return {Requirement(t).name.lower(): Requirement(t) for t in texts}


def pinned() -> dict:
    lines = [line.split("#")[0].strip() for line in (REPO / "constraints.txt").read_text().splitlines()]
    return {name.lower(): version for name, _, version in (line.partition("==") for line in lines if line)}


def test_every_declared_dependency_is_a_range_and_its_pin_lies_in_it():
    requirements, pins = declared(), pinned()
    for name, requirement in requirements.items():
        assert not any(spec.operator == "==" for spec in requirement.specifier), f"{name}: pinned in pyproject"
        assert name in pins, f"{name} has no exact version in constraints.txt"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (name, pins[name])
    assert requirements["triton"].specifier.contains("3.6.0") and requirements["triton"].specifier.contains("3.9.0")
    assert not requirements["triton"].specifier.contains("3.10.0")
    assert requirements["torch"].specifier.contains("2.11.0")


@pytest.mark.slow
def test_the_package_resolves_beside_a_cluster_torch_2_11_and_triton_3_6_without_replacing_them():
    """pip's resolver on the index's metadata (scripts/resolve_check.py: no wheel is downloaded)."""
    done = subprocess.run([sys.executable, str(REPO / "scripts/resolve_check.py"), "torch==2.11.0", "triton==3.6.0"],
                          capture_output=True, text=True, timeout=900)
    if done.returncode == EXIT_NO_INDEX:
        pytest.skip(f"the package index is unreachable from here, the resolution was not checked: "
                    f"{done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    resolved = dict(line.split("==") for line in done.stdout.split())
    assert resolved["torch"] == "2.11.0" and resolved["triton"] == "3.6.0"
    assert Version(resolved["deepspeed"]) >= Version("0.19.8")
    assert "resolves keeping torch==2.11.0 triton==3.6.0" in done.stderr
