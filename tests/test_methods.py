"""Every built-in method passes the conformance suite a third-party method runs."""

from __future__ import annotations

from autopeft.testing import MethodConformance
from autopeft_plugins.adapter import Adapter
from autopeft_plugins.bitfit import BitFit
from autopeft_plugins.ia3 import IA3
from autopeft_plugins.lora import Lora
from autopeft_plugins.prompt import PromptTuning
from autopeft_plugins.unfreeze import Unfreeze


class TestLora(MethodConformance):
    method = Lora()


class TestDoRA(MethodConformance):
    method = Lora()
    options = {"variants": ["dora"]}


class TestUnfreeze(MethodConformance):
    method = Unfreeze()


class TestBitFit(MethodConformance):
    method = BitFit()


class TestIA3(MethodConformance):
    method = IA3()


class TestPromptTuning(MethodConformance):
    method = PromptTuning()


class TestSerialAdapter(MethodConformance):
    method = Adapter()
    options = {"placement": ["serial"], "sublayers": ["attention+mlp"]}


class TestParallelAdapter(MethodConformance):
    method = Adapter()
    options = {"placement": ["parallel"], "sublayers": ["attention+mlp"]}
