"""`bioxlstm launch slurm` and `bioxlstm launch local`: start `bioxlstm train` on many processes.

Standard library only at module top, so `bioxlstm --help` stays fast; submitit, torch and the
trainer are imported inside the handlers.
"""
from __future__ import annotations

import argparse

SLURM_EPILOG = """\
examples:
  bioxlstm launch slurm --config configs/prot_xlstm_102m.yaml --nodes 4 --gpus-per-node 4 \\
      --partition gpu --time 2-00:00:00 --setup "module load cuda/12.4" train.lr=6e-4
  # one job per curriculum group, each waiting (afterok) for the previous one:
  bioxlstm launch slurm --config configs/prot_xlstm_102m.yaml --gpus-per-node 4 --partition gpu \\
      --stage-groups 0-3,4-5,6-7 --nodes 2 --stage-time 12:00:00,1-00:00:00,2-00:00:00
  # print the sbatch scripts and the resolved config, submit nothing:
  bioxlstm launch slurm --config configs/prot_xlstm_102m.yaml --partition gpu --dry-run

Preemption and time limits: SLURM signals the job (USR2, --signal-delay-s seconds ahead); every
rank checkpoints at the next step boundary and the job requeues itself, resuming from `latest`.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    launch = subparsers.add_parser(
        "launch", help="run training on many processes: SLURM through submitit, or locally",
        description="Start the same trainer as `bioxlstm train` on several processes.")
    launch_sub = launch.add_subparsers(dest="launch_target", metavar="TARGET")
    launch.set_defaults(handler=lambda args: _print_help(launch))
    _register_slurm(launch_sub)
    _register_local(launch_sub)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config YAML (as for `bioxlstm train`)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides passed to the trainer, e.g. train.lr=3e-4")
    parser.add_argument("--resume", action="store_true",
                        help="continue a run whose output directory holds a different config "
                             "(without it, that is an error; a same-config run always resumes from `latest`)")


def _register_slurm(launch_sub) -> None:
    parser = launch_sub.add_parser(
        "slurm", help="submit a multi-node run to SLURM (submitit), preemptible and requeueable",
        description="Submit `bioxlstm train` to SLURM through submitit: one task per GPU, ranks derived "
                    "from the SLURM environment, NCCL between GPUs.",
        epilog=SLURM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_arguments(parser)
    parser.add_argument("--nodes", type=int, default=1, help="nodes per job (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=1,
                        help="GPUs per node; one task (rank) per GPU (default 1)")
    parser.add_argument("--partition", help="SLURM partition (required)")
    parser.add_argument("--time", default="24:00:00",
                        help="time limit per job: minutes, HH:MM:SS or D-HH:MM:SS (default 24:00:00)")
    parser.add_argument("--account", help="SLURM account to charge")
    parser.add_argument("--qos", help="SLURM quality of service")
    parser.add_argument("--constraint", help="SLURM node feature constraint, e.g. h100")
    parser.add_argument("--mem", help="memory per node as sbatch takes it, e.g. 400G (default: partition's)")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per rank (for data loading)")
    parser.add_argument("--exclusive", action="store_true", help="do not share nodes with other jobs")
    parser.add_argument("--setup", action="append", default=[], metavar="SHELL_LINE",
                        help="shell line run before srun, e.g. \"module load cuda/12.4\" (repeatable)")
    parser.add_argument("--job-name", default="bioxlstm", help="SLURM job name (stage groups add a suffix)")
    parser.add_argument("--max-retries", type=int, default=3,
                        help="requeues after failures other than preemption/time-out (default 3)")
    parser.add_argument("--max-timeouts", type=int, default=3,
                        help="requeues after time-outs (submitit's max_num_timeout; default 3); "
                             "preemptions do not count")
    parser.add_argument("--signal-delay-s", type=int, default=120,
                        help="seconds before the time limit at which SLURM signals the job to checkpoint "
                             "(default 120)")
    parser.add_argument("--chain-stages", action="store_true",
                        help="submit each curriculum stage as its own job, chained with afterok dependencies")
    parser.add_argument("--stage-groups", metavar="K-L,...",
                        help="group stages into jobs, e.g. 0-3,4-5,6 (implies --chain-stages)")
    parser.add_argument("--stage-nodes", metavar="N,...",
                        help="nodes per stage job, comma separated (default --nodes); all groups need the same "
                             "count, since a chained job resumes its predecessor's checkpoint")
    parser.add_argument("--stage-time", metavar="T,...",
                        help="time limit per stage job, comma separated (default --time)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the sbatch script(s) and the resolved config; submit nothing")
    parser.set_defaults(handler=_launch_slurm)


def _register_local(launch_sub) -> None:
    parser = launch_sub.add_parser(
        "local", help="run on this machine with N processes (gloo on CPU, NCCL on GPUs)",
        description="Start N local processes of `bioxlstm train` with RANK/WORLD_SIZE/MASTER_ADDR set. "
                    "SIGTERM, SIGUSR1 and SIGUSR2 are forwarded to every rank (checkpoint and stop); "
                    "if one rank dies the others are stopped and the exit code is non-zero.")
    _add_run_arguments(parser)
    parser.add_argument("--nproc", type=int, default=1, help="number of processes (ranks), e.g. GPUs (default 1)")
    parser.add_argument("--master-port", type=int, help="rendezvous port (default: a free port)")
    parser.set_defaults(handler=_launch_local)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _launch_slurm(args: argparse.Namespace) -> int:
    from launchers import preflight
    from launchers.run_plan import load_run_plan
    from launchers.slurm_submit import SlurmOptions, plan_jobs, render_script, submit_jobs
    from launchers.stage_groups import StageGroup, build_stage_groups, parse_time_minutes

    partition = preflight.check_partition(args.partition)
    preflight.check_software()
    _check_at_least(1, nodes=args.nodes, gpus_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay_s)
    _check_at_least(0, max_retries=args.max_retries, max_timeouts=args.max_timeouts)
    time_min = parse_time_minutes(args.time)
    plan = load_run_plan(args.config, args.overrides)
    chained = bool(args.chain_stages or args.stage_groups or args.stage_nodes or args.stage_time)
    if chained:
        groups = build_stage_groups(plan.num_stages, args.stage_groups, args.stage_nodes, args.stage_time,
                                    args.nodes, time_min)
    else:
        groups = [StageGroup(0, plan.num_stages - 1, args.nodes, time_min)]
    for group in groups:
        preflight.check_parallel_layout(
            group.nodes * args.gpus_per_node, plan.context_parallel_size,
            f"{group.nodes} node(s) x --gpus-per-node {args.gpus_per_node} ({group.label})")
    preflight.check_same_world_size(groups, args.gpus_per_node)
    preflight.check_writable(plan.run_dir)
    preflight.check_existing_run(plan.saved_config_path, plan.resolved, args.resume)

    options = SlurmOptions(
        gpus_per_node=args.gpus_per_node, partition=partition, account=args.account, qos=args.qos,
        constraint=args.constraint, mem=args.mem, exclusive=args.exclusive, setup=list(args.setup),
        cpus_per_task=args.cpus_per_task, job_name=args.job_name, max_retries=args.max_retries,
        max_timeouts=args.max_timeouts, signal_delay_s=args.signal_delay_s)
    jobs = plan_jobs(plan.train_argv(), groups, options, chained)
    if args.dry_run:
        print(f"# resolved config ({plan.config_path}, run directory {plan.run_dir})")
        print(plan.resolved_yaml)
        for index, job in enumerate(jobs):
            dependency = f"afterok:<job id of {jobs[index - 1].group.label}>" if index else None
            stops = "" if job.stop_after_stage is None else f" (stops after stage {job.stop_after_stage})"
            print(f"# ---- sbatch script {index + 1}/{len(jobs)}: {job.group.label}, "
                  f"trainer arguments: {' '.join(job.train_argv)}{stops}")
            print(render_script(plan.run_dir, job.parameters, dependency))
        return 0
    job_ids = submit_jobs(plan.run_dir, jobs, options)
    for job, job_id in zip(jobs, job_ids):
        print(f"submitted job {job_id}: {job.group.label} on {job.group.nodes} node(s) x "
              f"{args.gpus_per_node} GPU(s), logs in {plan.run_dir / 'slurm' / job_id}")
    return 0


def _launch_local(args: argparse.Namespace) -> int:
    from launchers import preflight
    from launchers.local_launch import launch_local
    from launchers.run_plan import load_run_plan

    _check_at_least(1, nproc=args.nproc)
    preflight.check_software()
    plan = load_run_plan(args.config, args.overrides)
    preflight.check_parallel_layout(args.nproc, plan.context_parallel_size, f"--nproc {args.nproc}")
    preflight.check_writable(plan.run_dir)
    preflight.check_existing_run(plan.saved_config_path, plan.resolved, args.resume)
    return launch_local(args.nproc, plan.train_argv(), master_port=args.master_port,
                        clean_exit_codes=_clean_exit_codes())


def _clean_exit_codes() -> tuple[int, ...]:
    """0 and the trainer's "checkpointed and stopped for preemption" exit code."""
    from pretrain.train import EXIT_PREEMPTED

    return (0, EXIT_PREEMPTED)


def _check_at_least(minimum: int, **values: int) -> None:
    from launchers.errors import LaunchOptionError

    for name, value in values.items():
        if value < minimum:
            raise LaunchOptionError(f"--{name.replace('_', '-')} {value}: must be at least {minimum}")
