"""Curriculum stages split into chained jobs with their own node counts and time limits."""
from __future__ import annotations

import pytest

from launchers.errors import LaunchOptionError
from launchers.stage_groups import StageGroup, build_stage_groups, parse_stage_groups, parse_time_minutes


def test_stage_groups_with_per_group_nodes_and_time():
    groups = build_stage_groups(7, "0-3,4-5,6", "1,2,4", "12:00:00,1-00:00:00,90", default_nodes=1,
                                default_time_min=60)
    assert groups == [StageGroup(0, 3, 1, 720), StageGroup(4, 5, 2, 1440), StageGroup(6, 6, 4, 90)]
    assert [group.label for group in groups] == ["stages0-3", "stages4-5", "stage6"]


def test_chain_stages_default_is_one_job_per_stage_with_shared_values():
    groups = build_stage_groups(3, None, "2", None, default_nodes=1, default_time_min=30)
    assert groups == [StageGroup(index, index, 2, 30) for index in range(3)]


@pytest.mark.parametrize("text, fragment", [
    ("0-3,5-6", "expected a group starting at stage 4"),
    ("1-6", "starting at stage 0"),
    ("0-2", "config has 7 stages"),
    ("0-3,x", "not K or K-L"),
    ("0-3,4-9", "config has 7 stages"),
])
def test_bad_stage_groups_are_rejected(text, fragment):
    with pytest.raises(LaunchOptionError, match=fragment):
        parse_stage_groups(text, 7)


def test_per_group_value_count_must_match():
    with pytest.raises(LaunchOptionError, match="3 values for 2 stage groups"):
        build_stage_groups(2, None, "1,2,4", None, default_nodes=1, default_time_min=30)


@pytest.mark.parametrize("text, minutes", [
    ("45", 45), ("45:30", 46), ("02:00:00", 120), ("1-00", 1440), ("1-02:30", 1590), ("2-00:00:01", 2881),
])
def test_slurm_time_formats(text, minutes):
    assert parse_time_minutes(text) == minutes


@pytest.mark.parametrize("text", ["abc", "1:2:3:4", "0", "x-01:00"])
def test_bad_time_is_rejected(text):
    with pytest.raises(LaunchOptionError, match="time"):
        parse_time_minutes(text)
