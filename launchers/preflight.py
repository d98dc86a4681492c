"""Checks made before anything is queued or started: a mistake found here costs seconds, found
after hours in the SLURM queue it costs hours. Nothing here leaves anything on disk (the
writability probe is a temporary file, deleted at once).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from launchers.errors import LaunchOptionError, OutputDirError, ParallelLayoutError, SoftwareEnvironmentError

# Keys that only say when to stop, not what is trained: chained stage jobs set train.max_steps.
STOP_ONLY_KEYS = ("train.max_steps",)


def check_software(problems: list[str] | None = None) -> None:
    """Refuse a combination of installed versions known not to work (the first one found; `bioxlstm
    env` lists them all). `problems` defaults to this environment's."""
    if problems is None:
        from pretrain.environment import known_problems

        problems = known_problems()
    if problems:
        more = f" (and {len(problems) - 1} more: bioxlstm env)" if len(problems) > 1 else ""
        raise SoftwareEnvironmentError(problems[0] + more)


def check_partition(partition: str | None) -> str:
    if not partition:
        raise LaunchOptionError("--partition is missing: name the SLURM partition to run in "
                                "(e.g. --partition gpu; `sinfo -s` lists them)")
    return partition


def check_parallel_layout(num_gpus: int, context_parallel_size: int, where: str) -> None:
    """Every rank must belong to one whole context-parallel group."""
    if context_parallel_size < 1:
        raise ParallelLayoutError(f"parallel.context_parallel_size={context_parallel_size}: must be >= 1")
    if num_gpus % context_parallel_size:
        raise ParallelLayoutError(
            f"{where} = {num_gpus} processes do not split into context-parallel groups of "
            f"parallel.context_parallel_size={context_parallel_size}: use a multiple of "
            f"{context_parallel_size} processes or change parallel.context_parallel_size"
        )


def check_same_world_size(groups, gpus_per_node: int) -> None:
    """Chained jobs resume from `latest`, and the trainer resumes only with the world size that
    wrote it (ZeRO shards optimizer state per rank), so every group needs the same node count
    until checkpoints can be resharded."""
    nodes = sorted({group.nodes for group in groups})
    if len(nodes) > 1:
        raise LaunchOptionError(
            f"--stage-nodes gives stage groups different node counts ({', '.join(map(str, nodes))}), but each "
            "chained job resumes the previous job's checkpoint and the trainer resumes only with the same "
            f"number of processes; give every group the same node count (e.g. --stage-nodes {nodes[-1]}) "
            "or start a longer-context continuation as a new run with `bioxlstm train --from CKPT --stage K`"
        )


def check_writable(run_dir: Path) -> None:
    """The run directory, or the nearest ancestor that exists, must be writable by this user."""
    path = Path(run_dir).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(f"output directory {path}: {probe} exists and is not a directory; "
                             "choose another output directory")
    try:  # a real probe: os.access is wrong on root-squashed NFS, read-only mounts and for root
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as err:
        raise OutputDirError(f"output directory {path} is not writable (creating a file in {probe} failed: "
                             f"{err.strerror}); choose a directory you can write, e.g. on the cluster's "
                             "shared scratch") from None


def check_existing_run(saved_config_path: Path, resolved: Mapping[str, Any], resume: bool) -> None:
    """An existing run directory may only be continued with the same config, unless --resume."""
    import yaml

    if resume or not saved_config_path.exists():
        return
    saved = yaml.safe_load(saved_config_path.read_text()) or {}
    differing = [key for key in differing_keys(saved, resolved) if key not in STOP_ONLY_KEYS]
    if differing:
        shown = ", ".join(differing[:8]) + (" ..." if len(differing) > 8 else "")
        raise OutputDirError(
            f"{saved_config_path.parent} already holds a run with a different config ({shown} differ from "
            f"{saved_config_path.name}); pass --resume to continue that run with the new settings, or choose "
            "a new output directory"
        )


def differing_keys(saved: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(saved, Mapping) and isinstance(new, Mapping):
        keys: list[str] = []
        for key in sorted(set(saved) | set(new), key=str):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in new:
                keys.append(dotted)
            else:
                keys.extend(differing_keys(saved[key], new[key], dotted))
        return keys
    return [] if saved == new else [prefix or "<root>"]
