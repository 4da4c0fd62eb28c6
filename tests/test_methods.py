"""Every built-in method passes the conformance suite a third-party method runs."""

from __future__ import annotations

from autopeft.testing import MethodConformance
from autopeft_plugins.bitfit import BitFit
from autopeft_plugins.lora import Lora
from autopeft_plugins.unfreeze import Unfreeze


class TestLora(MethodConformance):
    method = Lora()


class TestUnfreeze(MethodConformance):
    method = Unfreeze()


class TestBitFit(MethodConformance):
    method = BitFit()
