"""The Python front end: :func:`tune` and its :class:`TuneResult` (the layer beside the CLI)."""

from autopeft.api.result import TuneResult
from autopeft.api.tune import tune

__all__ = ["tune", "TuneResult"]
