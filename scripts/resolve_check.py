"""Does this package resolve against a given set of installed versions without replacing them?

A cluster's environment already has a CUDA torch and the Triton its wheel requires; installing
the package there must keep them. This asks pip's own resolver (`pip install --dry-run
--ignore-installed --report`) for the package's dependencies with those versions pinned as
constraints: pip fetches index pages and the wheels' metadata only (PEP 658), never the wheels
(torch's CUDA wheel and its nvidia-* dependencies are several GB), and installs nothing. Only the
sdists among the dependencies (DeepSpeed) are downloaded, a few MB, to read their metadata.

    python scripts/resolve_check.py torch==2.11.0 triton==3.6.0

prints the resolved version of every package and exits 0 when the pinned versions are kept,
1 when pip cannot resolve (its error lines are printed), 3 when the package index cannot be
reached (nothing was checked).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXIT_UNRESOLVABLE = 1
EXIT_NO_INDEX = 3
# pip's messages when no index could be reached (no DNS, no route, proxy refused)
NETWORK_ERRORS = ("NewConnectionError", "NameResolutionError", "Failed to establish a new connection",
                  "Max retries exceeded", "ConnectTimeoutError", "ProxyError")


def resolve(pins: list[str], extras: str = "", timeout_s: float = 600.0) -> tuple[int, dict, str]:
    """(status, {name: version}, pip's output) of resolving REPO[extras] with `pins` as constraints."""
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "pinned.txt"
        constraints.write_text("\n".join(pins) + "\n")
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
                   "--report", str(report), "-c", str(constraints), f"{REPO}{extras}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        output = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                           if not line.startswith("WARNING: Location"))   # local find-links noise
        if done.returncode != 0:
            status = EXIT_NO_INDEX if any(e in output for e in NETWORK_ERRORS) else EXIT_UNRESOLVABLE
            return status, {}, output
        installs = json.loads(report.read_text())["install"]
        return 0, {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}, output


def kept(pins: list[str], resolved: dict) -> list[str]:
    """The pins whose exact version the resolution does not keep."""
    lost = []
    for pin in pins:
        name, _, version = pin.partition("==")
        if resolved.get(name.strip().lower()) != version.strip():
            lost.append(f"{pin} (resolved: {resolved.get(name.strip().lower(), 'absent')})")
    return lost


def main(argv: list[str]) -> int:
    pins = [a for a in argv if "==" in a]
    if not pins or len(pins) != len(argv):
        print("usage: python scripts/resolve_check.py NAME==VERSION ...", file=sys.stderr)
        return 2
    status, resolved, output = resolve(pins)
    if status == EXIT_NO_INDEX:
        print(f"package index unreachable, nothing checked:\n{output}", file=sys.stderr)
        return status
    if status:
        print(f"does not resolve with {' '.join(pins)}:\n{output}", file=sys.stderr)
        return status
    for name, version in sorted(resolved.items()):
        print(f"{name}=={version}")
    lost = kept(pins, resolved)
    if lost:
        print(f"resolves, but replaces: {', '.join(lost)}", file=sys.stderr)
        return EXIT_UNRESOLVABLE
    print(f"resolves keeping {' '.join(pins)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
