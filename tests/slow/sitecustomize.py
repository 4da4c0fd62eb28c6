"""Put on PYTHONPATH by the worker tests: every training step of every autopeft process (local
workers included) sleeps AUTOPEFT_TEST_STEP_SECONDS, so a test can kill or interrupt one in mid-trial."""

import os
import time

_seconds = float(os.environ.get("AUTOPEFT_TEST_STEP_SECONDS", "0"))
if _seconds:
    import torch.nn.functional as F

    _real = F.cross_entropy

    def _slow_cross_entropy(*args, **kwargs):
        time.sleep(_seconds)
        return _real(*args, **kwargs)

    F.cross_entropy = _slow_cross_entropy
