"""Progress in a log file is a bounded number of plain lines; on a terminal it is tqdm's live bar.

A SLURM log is a file: tqdm's carriage-return frames (one per 0.1 s) would all be kept there.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline.build_progress import build_progress
from data_pipeline.progress import INTERVAL_ENV, Progress, ProgressIntervalError, progress_interval_s

REPO = Path(__file__).resolve().parents[2]

# 20,000 steps over ~1.5 s, the plain-line interval 0.25 s: at most 1.5 / 0.25 + 1 (closing) lines.
MANY_STEPS = ("import time\n"
              "from data_pipeline.progress import Progress\n"
              "bar = Progress(total=20000, desc='train', unit='step')\n"
              "for step in range(20000):\n"
              "    bar.update(1)\n"
              "    bar.set_postfix(loss=f'{1 / (step + 1):.4f}')\n"
              "    time.sleep(0.000075)\n"
              "bar.write('step 20000: validation loss 0.1234')\n"
              "bar.close()\n")


def test_a_run_of_many_steps_writes_a_bounded_number_of_plain_lines_to_a_file_stderr(tmp_path):
    log = tmp_path / "slurm.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), INTERVAL_ENV: "0.25"}
    started = time.monotonic()
    with open(log, "w") as stderr:
        subprocess.run([sys.executable, "-c", MANY_STEPS], stdout=stderr, stderr=stderr, env=env, check=True,
                       timeout=120)                                  # one log for both, as SLURM writes it
    loop_s = time.monotonic() - started
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text            # no frames, no cursor movement
    lines = text.splitlines()
    progress_lines = [line for line in lines if line.startswith("train: ")]
    assert 1 <= len(progress_lines) <= loop_s / 0.25 + 2
    assert "step 20000: validation loss 0.1234" in lines
    assert progress_lines[-1].startswith("train: 20000/20000 step (100%)")
    assert "loss=0.0001" in progress_lines[-1]                 # the postfix, as on the bar
    assert "step/s" in progress_lines[-1]


def test_plain_lines_come_once_per_interval(tmp_path):
    out = tmp_path / "log.txt"
    with open(out, "w") as stream:
        bar = Progress(total=100, desc="build", unit="sample", interval_s=0.5, file=stream)
        for _ in range(5):
            for _ in range(10):
                bar.update(1)
            time.sleep(0.51)
        bar.update(50)                  # no line yet: the interval has not passed since the last one
        bar.close()
    lines = out.read_text().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["11/100", "21/100", "31/100", "41/100", "100/100"]


def test_a_terminal_gets_the_live_bar(tmp_path):
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            bar = Progress(total=10, desc="train", unit="step", file=tty)
            assert bar.live
            bar.update(10)
            bar.close()
        assert b"\r" in os.read(master, 65536)                  # tqdm's redrawn frames
    finally:
        os.close(master)
        os.close(slave)


def test_disabled_progress_writes_no_progress_but_still_messages(tmp_path):
    out = tmp_path / "log.txt"
    with open(out, "w") as stream:
        with Progress(total=3, desc="x", unit="it", disable=True, interval_s=1e-9, file=stream) as bar:
            bar.update(3)
            bar.write("step 3: skipped")                      # as tqdm.write: messages are not progress
    assert out.read_text() == "step 3: skipped\n"


def test_the_interval_comes_from_the_caller_then_the_environment(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "5")
    assert progress_interval_s(2.0) == 2.0
    assert progress_interval_s(None) == 5.0
    monkeypatch.delenv(INTERVAL_ENV)
    assert progress_interval_s(None) == 60.0
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ProgressIntervalError, match=f"{INTERVAL_ENV}='soon'"):
        progress_interval_s(None)


def test_a_data_build_logs_plain_lines(tmp_path, capsys):
    from data_pipeline.demo import build_demo_shards

    build_demo_shards(tmp_path / "shards", "protein", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any(line.startswith("writing protein shards: ") and "(100%)" in line for line in err.splitlines())
    with build_progress(None, "reading x", "seq") as bar:     # unknown total: a count and a rate
        bar.update(7)
        assert bar.format_line().startswith("reading x: 7 seq [")
