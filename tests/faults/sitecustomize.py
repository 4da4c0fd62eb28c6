"""Fault injection for the worker tests and ``benchmarks/bench_faults.py``, put on PYTHONPATH so it
reaches every autopeft process they start (local workers included). Off unless its variables are set:

- ``AUTOPEFT_TEST_STEP_SECONDS``: every training step sleeps this long, so a test can kill or
  interrupt a worker in mid-trial.
- ``AUTOPEFT_TEST_NAN_RATE`` / ``AUTOPEFT_TEST_ERROR_RATE``: each training step's loss is NaN, or
  raises ``RuntimeError("injected fault")``, with this probability.
"""

import os
import random
import time

_seconds = float(os.environ.get("AUTOPEFT_TEST_STEP_SECONDS", "0"))
_nan_rate = float(os.environ.get("AUTOPEFT_TEST_NAN_RATE", "0"))
_error_rate = float(os.environ.get("AUTOPEFT_TEST_ERROR_RATE", "0"))

if _seconds or _nan_rate or _error_rate:
    import torch.nn.functional as F

    _real = F.cross_entropy
    _dice = random.Random(os.getpid())

    def _faulty_cross_entropy(*args, **kwargs):
        time.sleep(_seconds)
        roll = _dice.random()
        if roll < _error_rate:
            raise RuntimeError("injected fault")
        loss = _real(*args, **kwargs)
        return loss * float("nan") if roll < _error_rate + _nan_rate else loss

    F.cross_entropy = _faulty_cross_entropy
