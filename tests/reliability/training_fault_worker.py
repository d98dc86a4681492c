"""`python -m training_fault_worker <train args>`: the local launcher's worker with injected faults.

The same entry as `launchers.worker` (what `bioxlstm launch local` starts per rank), after
`training_fault_hooks.install_from_env()` read the faults from BIOXLSTM_TEST_FAULTS (JSON).
"""
import sys

import training_fault_hooks
from launchers.worker import main

if __name__ == "__main__":
    training_fault_hooks.install_from_env()
    sys.exit(main())
