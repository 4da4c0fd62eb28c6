"""Fault injection for the worker tests and ``benchmarks/bench_faults.py``, put on PYTHONPATH so it
reaches every autopeft process they start (local workers included). Off unless its variables are set:

- ``AUTOPEFT_TEST_STEP_SECONDS``: every training step sleeps this long, so a test can kill or
  interrupt a worker in mid-trial.
- ``AUTOPEFT_TEST_NAN_RATE`` / ``AUTOPEFT_TEST_ERROR_RATE``: each training step's loss is NaN, or
  raises ``RuntimeError("injected fault")``, with this probability.
- ``AUTOPEFT_TEST_HOLD_DIR``: every trial's fit (``Workbench.fit``) first writes
  ``held-<pid>-<trial>`` into this folder, then waits until a file ``release`` appears there: a test
  that waits for the first file knows the trial is in mid-run, and that it stays there until the test
  has sent its signal (or killed the process), however busy the machine. Ctrl-C and SIGTERM end the
  wait as they end a training step.
- ``AUTOPEFT_TEST_ENOSPC_UNDER``: opening a file for writing below this folder fails with ENOSPC
  ("No space left on device"), as on a full disk: the tests run as root, where a read-only or
  undersized folder cannot be made from permission bits.
"""

import builtins
import errno
import importlib.abc
import importlib.machinery
import io
import os
import random
import sys
import time

_seconds = float(os.environ.get("AUTOPEFT_TEST_STEP_SECONDS", "0"))
_nan_rate = float(os.environ.get("AUTOPEFT_TEST_NAN_RATE", "0"))
_error_rate = float(os.environ.get("AUTOPEFT_TEST_ERROR_RATE", "0"))
_full = os.environ.get("AUTOPEFT_TEST_ENOSPC_UNDER", "")
_hold = os.environ.get("AUTOPEFT_TEST_HOLD_DIR", "")

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

if _full:
    _full_root = os.path.realpath(_full)
    _real_open, _real_os_open = builtins.open, os.open

    def _on_full_disk(path) -> bool:
        try:
            where = os.path.realpath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return where == _full_root or where.startswith(_full_root + os.sep)

    def _no_space(path):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    def _open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _on_full_disk(file):
            raise _no_space(file)
        return _real_open(file, mode, *args, **kwargs)

    def _os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _on_full_disk(path):
            raise _no_space(path)
        return _real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = _open
    os.open = _os_open

if _hold:

    def _held(fit):
        def fit_when_released(self, *args, **kwargs):
            label = kwargs.get("label", "")
            with open(os.path.join(_hold, f"held-{os.getpid()}-{label}"), "w") as file:
                file.write(str(label))
            while not os.path.exists(os.path.join(_hold, "release")):
                time.sleep(0.05)
            return fit(self, *args, **kwargs)

        return fit_when_released

    class _HoldFinder(importlib.abc.MetaPathFinder):
        """Wraps ``Workbench.fit`` once its module is imported (importing it here would load torch
        in every process, the test's included)."""

        def find_spec(self, name, path=None, target=None):
            if name != "autopeft.training.workbench":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                module.Workbench.fit = _held(module.Workbench.fit)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _HoldFinder())
