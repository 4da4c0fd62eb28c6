"""An exported adapter in plain peft against autopeft's own model, on a study's whole validation split.

    python benchmarks/check_export.py studies/quickstart.toml out/best

Loads ``out/best`` twice — with ``PeftModel.from_pretrained`` on a plain transformers base model (no
autopeft involved), and with ``autopeft.load_model`` — scores the validation split with both, and
prints the largest logit difference, how many predictions agree, and both accuracies next to the one
the study recorded for the trial.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import study, tokenized
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

import autopeft
from autopeft.data import batches


def logits_of(model: torch.nn.Module, split, pad_token_id: int) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for batch in batches(split, 128, pad_token_id):
            batch.pop("labels")
            out.append(model(**batch).logits)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("export")
    args = parser.parse_args()
    folder = Path(args.export)
    record = json.loads((folder / "provenance.json").read_text())
    _, data, source, _ = tokenized(study(args.study))
    labels = torch.tensor(data.validation.labels)

    ours = autopeft.load_model(folder)
    base = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(record["labels"]), **record["model"]["overrides"]
    )
    plain = PeftModel.from_pretrained(base, str(folder)).eval()
    a, b = logits_of(ours, data.validation, data.pad_token_id), logits_of(plain, data.validation, data.pad_token_id)
    agree = int((a.argmax(-1) == b.argmax(-1)).sum())
    print(f"trial {record['trial']['number']} ({record['method']}), {len(labels)} validation examples")
    print(f"largest logit difference, plain peft vs autopeft.load_model: {float((a - b).abs().max()):.2e}")
    print(f"predictions that agree: {agree} of {len(labels)}")
    print(
        f"accuracy: plain peft {float((b.argmax(-1) == labels).float().mean()):.4f}, autopeft.load_model "
        f"{float((a.argmax(-1) == labels).float().mean()):.4f}, recorded by the study "
        f"{record['trial']['validation_metric']:.4f}"
    )


if __name__ == "__main__":
    main()
