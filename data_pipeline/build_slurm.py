"""`bioxlstm data build ... --slurm N`: the N parts of a build as one SLURM job array, then a
merge job that starts when every part succeeded (`--dependency=afterok:<array>`), via submitit.

It lives here rather than in `launchers/` (which submits training runs) because the jobs call
the data builders: data_pipeline must not import launchers, and launchers need not know the
builders' arguments. Each array task builds `--part I/N` into `<out>.parts/`; a task that is
rerun (requeue, or the whole command run again) keeps its finished part (checked by sha256).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path


def builder_for(modality: str):
    if modality == "dna":
        from data_pipeline.build_dna import build_dna
        return build_dna
    if modality == "protein":
        from data_pipeline.build_protein import build_protein
        return build_protein
    from data_pipeline.build_molecules import build_molecules
    return build_molecules


@dataclass
class DataPartJob:
    """Array task I of N: build part I/N of the build described by `kwargs` into `parts_dir`."""

    modality: str
    kwargs: dict
    parts: int
    parts_dir: str

    def __call__(self, index: int) -> dict:
        info = builder_for(self.modality)(out=self.parts_dir, part=f"{index}/{self.parts}", progress=False,
                                       **self.kwargs)
        return {"part": info["part"], "samples": info["samples"]}


@dataclass
class DataMergeJob:
    """After the array: one manifest and the shards in `out` from every part in `parts_dir`."""

    parts_dir: str
    out: str
    workers: int = 1

    def __call__(self) -> dict:
        from data_pipeline.build_output import merge_parts

        parts = sorted(p for p in Path(self.parts_dir).glob("part-*-of-*") if p.is_dir())
        manifest = merge_parts(parts, self.out, progress=False, workers=self.workers)
        return {split: info["samples"] for split, info in manifest["splits"].items()}


@dataclass
class SlurmDataOptions:
    partition: str
    time_min: int = 240
    cpus_per_task: int = 1
    mem: str | None = None
    account: str | None = None
    array_parallelism: int = 256
    setup: list[str] = field(default_factory=list)
    job_name: str = "bioxlstm-data"

    def parameters(self) -> dict:
        params = {"job_name": self.job_name, "partition": self.partition, "time": self.time_min, "nodes": 1,
                  "ntasks_per_node": 1, "cpus_per_task": self.cpus_per_task, "setup": list(self.setup),
                  "array_parallelism": self.array_parallelism}
        params.update({k: v for k, v in (("mem", self.mem), ("account", self.account)) if v is not None})
        return params


def parts_dir_for(out: str) -> str:
    return f"{str(out).rstrip('/')}.parts"


def render(folder: Path, parameters: dict, **extra) -> str:
    """The sbatch script submitit writes for these parameters (dry run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, **parameters, **extra)


def submit_build(modality: str, kwargs: dict, parts: int, out: str, options: SlurmDataOptions,
                 dry_run: bool = False) -> list[str]:
    """Submit (or, dry run, render) the part array and the merge job; returns lines to print."""
    parts_dir = parts_dir_for(out)
    folder = Path(parts_dir).absolute() / "slurm" / "%j"
    part_job = DataPartJob(modality, kwargs, parts, parts_dir)
    merge_job = DataMergeJob(parts_dir, out, options.cpus_per_task)
    params = options.parameters()
    if dry_run:
        return [f"# ---- sbatch script 1/2: {parts} array tasks, task I builds --part I/{parts} into {parts_dir}",
                render(folder, params, map_count=parts),
                f"# ---- sbatch script 2/2: merge {parts_dir} -> {out} (after every part succeeded)",
                render(folder, {**params, "job_name": f"{options.job_name}-merge"},
                       dependency="afterok:<array job id>")]
    import submitit

    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**params)
    array = executor.map_array(part_job, list(range(parts)))
    array_id = str(array[0].job_id).split("_")[0]
    merger = submitit.SlurmExecutor(folder=folder)
    merger.update_parameters(**{**params, "job_name": f"{options.job_name}-merge"}, dependency=f"afterok:{array_id}")
    merge = merger.submit(merge_job)
    return [f"submitted array job {array_id}: {parts} parts into {parts_dir}",
            f"submitted merge job {merge.job_id}: {out} after array {array_id} succeeded; logs in {folder.parent}"]
