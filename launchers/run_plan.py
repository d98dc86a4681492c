"""What the launcher needs to know about a run, read once from the trainer's own config system.

The launcher never re-implements config parsing: it loads the RunConfig exactly as
`bioxlstm train` will (same YAML, same overrides) so the checks made before submission hold
for the run that starts later.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass(frozen=True)
class RunPlan:
    config_path: Path
    overrides: tuple[str, ...]
    resolved: dict[str, Any]
    resolved_yaml: str
    run_dir: Path
    saved_config_path: Path
    num_stages: int
    context_parallel_size: int

    def train_argv(self) -> list[str]:
        """Arguments of `bioxlstm train`; the config path is absolute because jobs start elsewhere."""
        return ["--config", str(self.config_path), *self.overrides]


def load_run_plan(config_path: str | Path, overrides: Sequence[str]) -> RunPlan:
    import yaml

    from pretrain import config as run_config

    path = Path(config_path).absolute()
    cfg = run_config.load_run_config(path, list(overrides))
    resolved = cfg.to_dict()
    run_dir = Path(cfg.train.out_dir).absolute()
    return RunPlan(
        config_path=path,
        overrides=tuple(overrides),
        resolved=resolved,
        resolved_yaml=yaml.safe_dump(resolved, sort_keys=False),
        run_dir=run_dir,
        saved_config_path=run_dir / run_config.RESOLVED_CONFIG_NAME,
        num_stages=max(1, len(cfg.curriculum.stages)),
        context_parallel_size=int(cfg.parallel.context_parallel_size),
    )


def stage_end_step(train_argv: Sequence[str], world_size: int, last_stage: int) -> int:
    """Optimizer step at which `last_stage` ends for this world size (capped by train.max_steps)."""
    from pretrain import config as run_config
    from pretrain.curriculum import Curriculum

    config_path, overrides = _split_train_argv(train_argv)
    cfg = run_config.load_run_config(config_path, overrides)
    dp_size = max(1, world_size // cfg.parallel.context_parallel_size)
    plan = Curriculum(cfg.curriculum.stages, cfg.train.grad_accum, dp_size).stages[last_stage]
    end_step = plan.first_step + plan.num_steps
    return end_step if cfg.train.max_steps is None else min(end_step, cfg.train.max_steps)


def _split_train_argv(train_argv: Sequence[str]) -> tuple[str, list[str]]:
    """Inverse of RunPlan.train_argv: (`--config` value, overrides)."""
    argv = list(train_argv)
    index = argv.index("--config")
    return argv[index + 1], argv[:index] + argv[index + 2:]
