"""The rank runner of the resume and fault tests reports what each rank did, on any machine load.

Both ranks run the real trainer entry with a user-facing error (a missing config file: one
line, exit 2, as through `bioxlstm train`). A hook holds rank 1 at its exit until rank 0 has
exited, then 3 s more: the interleaving a loaded machine produces now and then, made certain.
"""
import socket

import pytest

from trainer_processes import ONE_LINE_ERRORS, start_ranks, wait_all

MISSING_CONFIG = ["--config", "/nonexistent/config.yaml"]


def hold_rank1_at_exit(seconds: float) -> str:
    """Preamble: rank 0 leaves a marker as it exits; rank 1 exits `seconds` after seeing it."""
    return ("import atexit, os, pathlib, time\n"
            "marker = pathlib.Path('rank0.exited')\n"       # cwd of every rank is its log dir
            "def hold():\n"
            "    while not marker.exists():\n"
            "        time.sleep(0.05)\n"
            f"    time.sleep({seconds})\n"
            "if os.environ['RANK'] == '0':\n"
            "    atexit.register(marker.touch)\n"
            "else:\n"
            "    atexit.register(hold)\n" + ONE_LINE_ERRORS)


def test_a_rank_exiting_after_its_failed_peer_keeps_its_own_exit_code(tmp_path):
    """Both ranks fail with exit 2; rank 1 takes 3 s longer to exit. The runner used to kill every
    rank still running 2 s after the first failure, so rank 1 came back as -9."""
    procs = start_ranks(2, MISSING_CONFIG, tmp_path, preamble=hold_rank1_at_exit(3.0))
    codes = wait_all(procs, tmp_path)
    assert codes == [2, 2], (tmp_path / "rank1.log").read_text()
    for rank in (0, 1):
        assert "error: /nonexistent/config.yaml: no such config file" in (tmp_path / f"rank{rank}.log").read_text()


def test_a_rank_still_running_at_the_deadline_fails_the_test_and_is_killed(tmp_path):
    procs = start_ranks(2, MISSING_CONFIG, tmp_path, preamble=hold_rank1_at_exit(600.0))
    with pytest.raises(AssertionError, match="ranks did not finish in 4s"):
        wait_all(procs, tmp_path, timeout=4)
    assert all(p.poll() is not None for p in procs)


def test_the_rendezvous_port_is_held_from_before_the_ranks_start_until_they_are_done(tmp_path):
    """No window between choosing the ranks' MASTER_PORT and binding it: another socket asking
    for that port (as TCPStore binds: SO_REUSEADDR, any address) is refused while they run."""
    procs = start_ranks(2, MISSING_CONFIG, tmp_path, preamble=hold_rank1_at_exit(0.0))
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="Address already in use"):
            other.bind(("0.0.0.0", procs.store.port))
    assert wait_all(procs, tmp_path) == [2, 2]
