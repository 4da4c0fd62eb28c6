"""A zero-cost prior for where to adapt: how strongly the task loss pulls on each block's linears.

One backward pass over a few training batches through the frozen base model (with its task head)
gives the gradient of the loss with respect to every linear weight of every block. A block whose
linears have large gradients is where a small update changes the loss most: LoRA's first update of B
is that gradient projected on A, so the Frobenius norm ``||dL/dW||`` is what an adapter there can use
from the first step (a SNIP-style saliency, at ~1/1000 of a training's compute).

The scores are used twice. The search tries a **proxy-chosen LoRA configuration** first, next to the
default one: per-block ranks allocated in proportion to the block scores, at the default's size
(:func:`proxy_ranks`). And each trial gets a **configuration score**, the block scores weighted by
where the trial's trainable parameters sit (:func:`configuration_score`), so that how well the proxy
ranks configurations can be measured against what they trained to (:func:`proxy_correlation`:
Spearman over a study's complete trials).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autopeft.precision import attention_for_training, autocast_for

if TYPE_CHECKING:
    import optuna

    from autopeft.training.workbench import Workbench

__all__ = ["ProxyScores", "proxy_scores", "proxy_ranks", "configuration_score", "proxy_correlation", "PROXY_ATTR"]

#: The study user attribute the scores are recorded in (:meth:`ProxyScores.as_record`).
PROXY_ATTR = "proxy"


@dataclass(frozen=True)
class ProxyScores:
    """Gradient-norm shares: ``blocks[i]`` is block i's share of the summed norm (they sum to 1), and
    ``groups[g][i]`` the norm of module group g (query, value, mlp, ...) in block i, in the same unit."""

    blocks: list[float]
    groups: dict[str, list[float]]
    batches: int

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def proxy_scores(bench: Workbench, n_batches: int = 4) -> ProxyScores:
    """The scores of ``bench``'s base model on its first ``n_batches`` training batches (deterministic:
    the batches are taken in order, no dropout, the head as loaded with the study's seed)."""
    ctx = bench.ctx
    model = bench.base  # resident on the device; its flags and gradients are put back below
    linears = {
        (i, group, path): model.get_submodule(f"{block.path}.{path}")
        for i, block in enumerate(ctx.blocks)
        for group, paths in block.groups.items()
        for path in paths
    }
    weights = {key: module.weight for key, module in linears.items() if isinstance(module, nn.Linear)}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for w in weights.values():
        w.requires_grad_(True)
    norms = dict.fromkeys(weights, 0.0)
    was_training = model.training
    model.eval()
    try:
        used = 0
        for batch in bench.first_batches(n_batches):
            labels = batch.pop("labels")
            precision, length = bench.config.train.precision, batch["attention_mask"].shape[1]
            with autocast_for(bench.device, precision), attention_for_training(bench.device, precision, length):
                loss = bench.task.training_loss(model, batch, labels)
            if not torch.isfinite(loss):  # a batch the base model cannot score says nothing about where to adapt
                continue
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for key, grad in zip(weights, grads):
                norms[key] += 0.0 if grad is None else float(grad.float().norm())
            used += 1
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)
    total = sum(norms.values()) or 1.0
    blocks = [0.0] * len(ctx.blocks)
    groups: dict[str, list[float]] = {}
    for (i, group, _), value in norms.items():
        blocks[i] += value / total
        groups.setdefault(group, [0.0] * len(ctx.blocks))[i] += value / total
    return ProxyScores(blocks=blocks, groups=groups, batches=used)


def proxy_ranks(scores: list[float], choices: list[int], default_rank: int) -> list[int]:
    """Per-block ranks from ``choices`` (0 added) in proportion to ``scores``, summing to at most what
    ``default_rank`` in every block sums to: the default's size, spent where the loss pulls most.

    Blocks are filled best first with the rank closest to their share of the total; what a block
    cannot take (the largest choice) goes to the next.
    """
    total = default_rank * len(scores)
    ranks = [0] * len(scores)
    left = total
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        want = total * scores[i] / (sum(scores) or 1.0)
        fitting = [r for r in [0, *choices] if r <= left]
        ranks[i] = min(fitting, key=lambda r: (abs(r - want), r))
        left -= ranks[i]
    return ranks


def configuration_score(block_params: list[int], scores: list[float]) -> float:
    """A trained configuration's proxy score: the block scores weighted by the share of its block
    parameters each block holds (the head, trained by every method, does not discriminate)."""
    total = sum(block_params)
    if not total:
        return 0.0
    return sum(s * n / total for s, n in zip(scores, block_params))


def proxy_correlation(study: optuna.Study) -> tuple[float, int] | None:
    """Spearman's rho between the configuration scores and the trained metric of a study's complete
    trials (sign-corrected: positive means the proxy ranks better configurations higher), and how many
    trials it is over; None before the proxy ran or with fewer than 3 trials."""
    from scipy.stats import spearmanr

    from autopeft.storage.results import feasible_trials, metric_sign

    record = study.user_attrs.get(PROXY_ATTR)
    if not isinstance(record, dict):
        return None
    scored = [
        (configuration_score(t.user_attrs["block_params"], record["blocks"]), t.values[0])
        for t in feasible_trials(study)
        if t.user_attrs.get("block_params") and t.values
    ]
    if len(scored) < 3:
        return None
    rho = spearmanr([s for s, _ in scored], [metric_sign(study) * v for _, v in scored]).statistic
    return float(rho), len(scored)
