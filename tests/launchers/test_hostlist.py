"""SLURM_JOB_NODELIST expansion: the master address every task must agree on."""
from __future__ import annotations

import pytest

from launchers.errors import HostlistError
from launchers.hostlist import expand_hostlist, resolve_hostnames


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu017", ["gpu017"]),
    ("gpu[001-004]", ["gpu001", "gpu002", "gpu003", "gpu004"]),
    ("gpu[001-004,007]", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu007"]),
    ("node-a[1-2],node-b3", ["node-a1", "node-a2", "node-b3"]),
    ("a[9-11]", ["a9", "a10", "a11"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("cn[08-10]-ib,login1", ["cn08-ib", "cn09-ib", "cn10-ib", "login1"]),
    ("x[3,1]", ["x3", "x1"]),
])
def test_expand_hostlist_forms_slurm_writes(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("nodelist, fragment", [
    ("", "empty"),
    ("gpu[001-004", "never closed"),
    ("gpu001]", "without '['"),
    ("gpu[4-1]", "backwards"),
    ("gpu[a-b]", "not N or N-M"),
    ("gpu1,,gpu2", "empty host name"),
])
def test_malformed_nodelist_names_the_variable(nodelist, fragment):
    with pytest.raises(HostlistError) as info:
        expand_hostlist(nodelist)
    assert fragment in str(info.value)
    assert "SLURM_JOB_NODELIST" in str(info.value)
    assert info.value.user_facing


def test_resolve_falls_back_to_scontrol_for_unknown_forms(fake_slurm, tmp_path, monkeypatch):
    # The fake scontrol prints nothing, so the parser's own error must surface unchanged.
    with pytest.raises(HostlistError, match="backwards"):
        resolve_hostnames("gpu[4-1]")
    assert resolve_hostnames("gpu[1-2]") == ["gpu1", "gpu2"]
