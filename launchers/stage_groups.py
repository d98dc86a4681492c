"""Split a curriculum into SLURM jobs: which stages each job trains, on how many nodes, how long.

Long-context stages need more GPUs (context parallelism), so each group of stages becomes its own
job with its own node count and time limit, chained with `afterok` dependencies.
"""
from __future__ import annotations

from dataclasses import dataclass

from launchers.errors import LaunchOptionError


@dataclass(frozen=True)
class StageGroup:
    first_stage: int
    last_stage: int
    nodes: int
    time_min: int

    @property
    def label(self) -> str:
        if self.first_stage == self.last_stage:
            return f"stage{self.first_stage}"
        return f"stages{self.first_stage}-{self.last_stage}"


def parse_stage_groups(text: str, num_stages: int) -> list[tuple[int, int]]:
    """`0-3,4-5,6` -> [(0, 3), (4, 5), (6, 6)]; groups must cover 0..num_stages-1 in order."""
    groups: list[tuple[int, int]] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise LaunchOptionError(f"--stage-groups {text!r}: {part!r} is not K or K-L (stage indices from 0)")
        groups.append((int(low), int(high) if sep else int(low)))
    expected = 0
    for first, last in groups:
        if first != expected or last < first:
            raise LaunchOptionError(
                f"--stage-groups {text!r}: groups must be consecutive, cover every stage once, start at 0; "
                f"expected a group starting at stage {expected}, got {first}-{last}"
            )
        expected = last + 1
    if expected != num_stages:
        raise LaunchOptionError(
            f"--stage-groups {text!r} covers stages 0-{expected - 1} but the config has {num_stages} stages "
            f"(0-{num_stages - 1})"
        )
    return groups


def one_group_per_stage(num_stages: int) -> list[tuple[int, int]]:
    return [(index, index) for index in range(num_stages)]


def parse_per_group(text: str | None, num_groups: int, option: str, default: int, parse=int) -> list[int]:
    """`1,1,2,4` -> one value per group; a single value applies to all groups."""
    if text is None:
        return [default] * num_groups
    values = []
    for part in str(text).split(","):
        try:
            values.append(parse(part.strip()))
        except (ValueError, LaunchOptionError) as err:
            raise LaunchOptionError(f"{option} {text!r}: {part!r} is not valid ({err})") from None
    if len(values) == 1:
        return values * num_groups
    if len(values) != num_groups:
        raise LaunchOptionError(f"{option} {text!r} gives {len(values)} values for {num_groups} stage groups; "
                                "give one value per group or a single value for all")
    return values


def parse_time_minutes(text: str) -> int:
    """SLURM time formats: `MM`, `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS` -> minutes (rounded up)."""
    value = str(text).strip()
    days = 0
    if "-" in value:
        day_text, _, value = value.partition("-")
        if not day_text.isdigit():
            raise LaunchOptionError(f"time {text!r}: expected D-HH:MM:SS, HH:MM:SS or minutes")
        days = int(day_text)
    fields = value.split(":")
    if not all(field.isdigit() for field in fields) or len(fields) > 3:
        raise LaunchOptionError(f"time {text!r}: expected D-HH:MM:SS, HH:MM:SS or minutes")
    numbers = [int(field) for field in fields]
    if days:  # after D-, the first field is hours: D-HH, D-HH:MM, D-HH:MM:SS
        numbers += [0] * (3 - len(numbers))
        hours, minutes, seconds = numbers
    elif len(numbers) == 1:
        hours, minutes, seconds = 0, numbers[0], 0
    elif len(numbers) == 2:
        hours, minutes, seconds = 0, numbers[0], numbers[1]
    else:
        hours, minutes, seconds = numbers
    total = days * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)
    if total <= 0:
        raise LaunchOptionError(f"time {text!r}: must be at least one minute")
    return total


def build_stage_groups(num_stages: int, groups_text: str | None, nodes_text: str | None, time_text: str | None,
                       default_nodes: int, default_time_min: int) -> list[StageGroup]:
    spans = parse_stage_groups(groups_text, num_stages) if groups_text else one_group_per_stage(num_stages)
    nodes = parse_per_group(nodes_text, len(spans), "--stage-nodes", default_nodes)
    times = parse_per_group(time_text, len(spans), "--stage-time", default_time_min, parse=parse_time_minutes)
    for value in nodes:
        if value < 1:
            raise LaunchOptionError(f"--stage-nodes {nodes_text!r}: node counts must be >= 1")
    return [StageGroup(first, last, n, t) for (first, last), n, t in zip(spans, nodes, times)]
