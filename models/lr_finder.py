"""LR range test: raise the learning rate exponentially over mini-batches and watch the loss.

The suggestion is the rate where the smoothed loss falls fastest, a common and robust choice; the run
works on a copy of the model, so training starts from the same initial weights either way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loopline.config import TrainParams
from models.network import TabularNet
from models.trainer import Batch, epoch_batches, iterate_forever, make_optimizer


@dataclass
class LRRangeResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggested_lr: float = math.nan

    def to_dict(self) -> dict:
        return {"suggested_lr": self.suggested_lr, "lrs": self.lrs, "losses": self.losses, "smoothed": self.smoothed}


def lr_range_test(model: TabularNet, train: Batch, recipe: TrainParams, seed: int) -> LRRangeResult:
    sweep = recipe.lr_range
    probe = copy.deepcopy(model)
    probe.train()
    optimizer = make_optimizer(probe, recipe, lr=sweep.min_lr)
    ratio = (sweep.max_lr / sweep.min_lr) ** (1 / (sweep.steps - 1))
    batches = iterate_forever(lambda epoch: epoch_batches(len(train), recipe.batch_size, seed + 7, epoch))
    result = LRRangeResult()
    avg, best = 0.0, math.inf
    for step, index in zip(range(sweep.steps), batches):
        lr = sweep.min_lr * ratio**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train.take(index)
        loss = probe.loss(probe.logits(batch.numeric, batch.categorical), batch.target)
        value = loss.item()
        if not math.isfinite(value):
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        avg = 0.9 * avg + 0.1 * value
        smooth = avg / (1 - 0.9 ** (step + 1))
        result.lrs.append(lr)
        result.losses.append(value)
        result.smoothed.append(smooth)
        best = min(best, smooth)
        if step > 10 and smooth > 4 * best:
            break  # diverged: the rest of the sweep says nothing
    result.suggested_lr = suggest_lr(result.lrs, result.smoothed)
    return result


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float:
    """Steepest descent of the smoothed loss against log(lr), ignoring the noisy first and last points."""
    if len(lrs) < 8:
        return lrs[int(np.argmin(smoothed))] / 10 if lrs else math.nan
    slopes = np.gradient(np.asarray(smoothed), np.log10(np.asarray(lrs)))
    lo, hi = 3, max(4, len(lrs) - 3)
    return float(lrs[lo + int(np.argmin(slopes[lo:hi]))])


def plot_lr_range(result: LRRangeResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(result.lrs, result.losses, alpha=0.3, label="loss")
    ax.plot(result.lrs, result.smoothed, label="smoothed")
    ax.axvline(result.suggested_lr, color="tab:red", linestyle="--", label=f"suggested {result.suggested_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
