"""A worker for testing the local process supervisor itself (not the trainer).

Behaviour from PROBE_MODE: `crash_rank1` (rank 1 exits 3 at once, the others wait), `wait`
(every rank waits). Waiting ranks append each signal they receive to PROBE_DIR/rank<r>.log and
exit 0 on SIGUSR2 / SIGTERM, so the test sees exactly which signals were forwarded.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

rank = int(os.environ["RANK"])
log = Path(os.environ["PROBE_DIR"]) / f"rank{rank}.log"
mode = os.environ["PROBE_MODE"]


def record(signum, frame):
    with log.open("a") as handle:
        handle.write(f"{signal.Signals(signum).name} world={os.environ['WORLD_SIZE']}\n")
    if signum in (signal.SIGUSR2, signal.SIGTERM):
        sys.exit(0)


for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(signum, record)
log.write_text("")
if mode == "crash_rank1" and rank == 1:
    # die once the other ranks are up (handlers installed), so the test sees them stopped
    world = int(os.environ["WORLD_SIZE"])
    while not all((log.parent / f"rank{other}.log").exists() for other in range(world)):
        time.sleep(0.02)
    sys.exit(3)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
sys.exit(9)  # never reached when the supervisor works
