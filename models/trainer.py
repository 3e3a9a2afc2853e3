"""The training loop, in plain PyTorch, readable top to bottom.

Per step: take a batch, forward under autocast, loss, backward (scaled for fp16), clip, step, schedule,
and every N steps a checkpoint. Per epoch: validation loss, early stopping with the best weights kept,
a checkpoint. A checkpoint holds everything a resumed run needs to end with exactly the weights of an
uninterrupted one: model, optimiser, scheduler, grad scaler, RNG states, the position in the epoch, and
the early-stopping state.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loopline.config import TrainParams
from loopline.errors import LooplineError
from models.network import TabularNet

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ data on device
@dataclass
class Batch:
    numeric: torch.Tensor
    categorical: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor | None = None
    """Per-row loss weights (prepare.window.half_life_days); None: every row counts the same."""

    def __len__(self) -> int:
        return self.target.shape[0]

    def take(self, index: torch.Tensor) -> "Batch":
        weight = None if self.weight is None else self.weight[index]
        return Batch(self.numeric[index], self.categorical[index], self.target[index], weight)

    def to(self, device: torch.device) -> "Batch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if device.type == "cuda":  # pinned host memory lets the copy overlap with compute
                return t.pin_memory().to(device, non_blocking=True)
            return t.to(device)

        return Batch(move(self.numeric), move(self.categorical), move(self.target), move(self.weight))  # type: ignore[arg-type]


def make_batch(
    numeric: np.ndarray, categorical: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None
) -> Batch:
    return Batch(
        torch.from_numpy(numeric),
        torch.from_numpy(categorical),
        torch.from_numpy(target),
        None if weight is None else torch.from_numpy(np.asarray(weight, dtype=np.float32)),
    )


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """The epoch's batches of row indices: a permutation fixed by (seed, epoch), sharded across ranks
    the way DistributedSampler does it (padded so every rank gets the same number of batches)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    if world > 1:
        per_rank = math.ceil(n / world)
        order = torch.cat([order, order[: per_rank * world - n]])[rank::world]
    return list(order.split(batch_size))


# --------------------------------------------------------------------------------- reproducibility
def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # Strict on CPU; on CUDA a few kernels have no deterministic variant, so warn instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[-1], tuple(python[:-1]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------- device, precision
def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return torch.device("cuda", local_rank)


def resolve_precision(requested: str, device: torch.device) -> str:
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            log.info("precision %s asked for on CPU: training in fp32", requested)
        return "fp32"
    if requested == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return requested


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


# ------------------------------------------------------------------------------ optimiser, schedule
def make_optimizer(model: nn.Module, recipe: TrainParams, lr: float) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: TrainParams, lr: float, total_steps: int):
    from torch.optim import lr_scheduler

    if recipe.schedule == "one_cycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    if recipe.schedule == "cyclic":
        return lr_scheduler.CyclicLR(
            optimizer,
            base_lr=lr / 10,
            max_lr=lr,
            step_size_up=max(1, total_steps // 8),
            cycle_momentum=recipe.optimizer == "sgd",
        )
    if recipe.schedule == "warmup_cosine":
        warmup = max(1, int(recipe.warmup_fraction * total_steps))
        return lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total_steps))
    return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup to the base rate, then cosine decay to zero at the last step."""

    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a half-written checkpoint is never seen under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------- the loop
class TrainingDiverged(LooplineError):
    """The training or validation loss stopped being a finite number."""


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    steps: int = 0
    resumed_from: dict[str, int] | None = None
    samples_per_second: float = 0.0


class _Logits(nn.Module):
    """DDP wraps forward(); training needs the logits, so this forwards to TabularNet.logits."""

    def __init__(self, net: TabularNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.net.logits(numeric, categorical)


@torch.no_grad()
def evaluate_loss(model: TabularNet, data: Batch, device: torch.device, precision: str, chunk: int = 8192) -> float:
    """The mean loss over `data`; the weighted mean when its rows carry weights (a coreset)."""
    was_training = model.training
    model.eval()
    total, mass = 0.0, 0.0
    for start in range(0, len(data), chunk):
        part = data.take(torch.arange(start, min(start + chunk, len(data))))
        with autocast(device, precision):
            logits = model.logits(part.numeric, part.categorical)
        weight = float(part.weight.sum()) if part.weight is not None else float(len(part))
        total += float(model.loss(logits, part.target, part.weight)) * weight
        mass += weight
    model.train(was_training)
    return total / mass if mass > 0 else 0.0


@dataclass
class TrainState:
    """Where a run is, beyond the model's and the optimiser's own states: what a checkpoint saves and a
    resumed run restores, so that it continues bit for bit."""

    result: TrainResult
    best_state: dict[str, Any]
    """The weights of the best epoch so far (restored at the end)."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Batches of `epoch` already taken (a resumed run skips them)."""
    bad_epochs: int = 0
    """Epochs since the validation loss last improved (early stopping)."""
    epoch_loss_sum: Any = 0.0
    epoch_rows: int = 0


@dataclass
class _Optimisation:
    """The objects one training step moves forward."""

    model: TabularNet
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler


def _checkpoint(opt: _Optimisation, state: TrainState, fingerprint: str, finished: bool) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "finished": finished,
        "model": opt.model.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict(),
        "rng": rng_state(),
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "steps": state.result.steps,
        "epoch_loss_sum": state.epoch_loss_sum,
        "epoch_rows": state.epoch_rows,
        "best_state": state.best_state,
        "best_epoch": state.result.best_epoch,
        "best_val_loss": state.result.best_val_loss,
        "bad_epochs": state.bad_epochs,
        "history": state.result.history,
    }


def _resume(checkpoint: Path | None, fingerprint: str, opt: _Optimisation, state: TrainState) -> None:
    """Continue from the checkpoint when it is an unfinished run of this configuration and data."""
    if checkpoint is None or not checkpoint.is_file():
        return
    saved = load_checkpoint(checkpoint)
    if saved.get("fingerprint") != fingerprint:
        log.info("starting afresh: checkpoint %s belongs to another configuration or data", checkpoint)
        return
    if saved.get("finished"):
        log.info("starting afresh: checkpoint %s is of a run that finished", checkpoint)
        return
    opt.model.load_state_dict(saved["model"])
    opt.optimizer.load_state_dict(saved["optimizer"])
    opt.scheduler.load_state_dict(saved["scheduler"])
    opt.scaler.load_state_dict(saved["scaler"])
    set_rng_state(saved["rng"])
    state.best_state, state.bad_epochs = saved["best_state"], saved["bad_epochs"]
    state.epoch, state.batch_in_epoch = saved["epoch"], saved["batch_in_epoch"]
    state.epoch_loss_sum, state.epoch_rows = saved["epoch_loss_sum"], saved["epoch_rows"]
    result = state.result
    result.history, result.best_epoch = saved["history"], saved["best_epoch"]
    result.best_val_loss, result.steps = saved["best_val_loss"], saved["steps"]
    result.resumed_from = {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "step": result.steps}
    log.info("resumed from %s at epoch %d, batch %d", checkpoint, state.epoch, state.batch_in_epoch)


def _step(opt: _Optimisation, batch: Batch, recipe: TrainParams, device: torch.device, precision: str) -> torch.Tensor:
    """One optimisation step on a batch; its loss."""
    with autocast(device, precision):
        logits = opt.step_model(batch.numeric, batch.categorical)
    loss = opt.model.loss(logits, batch.target, batch.weight)
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    if recipe.grad_clip_norm is not None:
        opt.scaler.unscale_(opt.optimizer)
        nn.utils.clip_grad_norm_(opt.model.parameters(), recipe.grad_clip_norm)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    return loss


def _end_epoch(opt: _Optimisation, state: TrainState, val_loss: float, rank: int) -> dict[str, float]:
    """The epoch's record; the best weights kept; a diverged run stopped with what to do."""
    epoch, result = state.epoch, state.result
    record = {
        "epoch": epoch,
        "train_loss": float(state.epoch_loss_sum) / max(1, state.epoch_rows),
        "val_loss": val_loss,
        "lr": opt.optimizer.param_groups[0]["lr"],
        "step": result.steps,
    }
    if not (math.isfinite(record["train_loss"]) and math.isfinite(val_loss)):
        raise TrainingDiverged(
            f"epoch {epoch}: training loss {record['train_loss']:.4g}, validation loss {val_loss:.4g} at "
            f"lr {record['lr']:.3g}; the run diverged. Lower train.lr (or use train.lr: auto), keep "
            "train.grad_clip_norm set, and look for extreme values in the data report"
        )
    result.history.append(record)
    state.epoch_loss_sum, state.epoch_rows = 0.0, 0
    if val_loss < result.best_val_loss:
        result.best_val_loss, result.best_epoch, state.bad_epochs = val_loss, epoch, 0
        state.best_state = copy.deepcopy(opt.model.state_dict())
    else:
        state.bad_epochs += 1
    if rank == 0:
        log.info(
            "epoch %d: train loss %.5f, val loss %.5f, lr %.3g%s",
            epoch,
            record["train_loss"],
            val_loss,
            record["lr"],
            " (best)" if state.bad_epochs == 0 else "",
        )
    return record


def train_model(
    model: TabularNet,
    train: Batch,
    val: Batch,
    recipe: TrainParams,
    *,
    seed: int,
    lr: float,
    device: torch.device,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    rank: int = 0,
    world: int = 1,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    restore_best: bool = True,
) -> TrainResult:
    """Train in place and restore the best epoch's weights. `on_epoch` sees each epoch's record (epoch,
    train_loss, val_loss, lr, step) once it is final; what it raises ends the run (a pruned trial).
    `restore_best=False` (a refit, whose validation rows are among its training rows): every epoch
    runs and the last epoch's weights stay."""
    precision = resolve_precision(recipe.precision, device)
    model.to(device)
    train, val = train.to(device), val.to(device)
    step_model: nn.Module = _Logits(model)
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            step_model, device_ids=[device.index] if device.type == "cuda" else None
        )
    steps_per_epoch = len(epoch_batches(len(train), recipe.batch_size, seed, 0, rank, world))
    total_steps = steps_per_epoch * recipe.epochs
    optimizer = make_optimizer(model, recipe, lr)
    opt = _Optimisation(
        model,
        step_model,
        optimizer,
        make_scheduler(optimizer, recipe, lr, total_steps),
        torch.amp.GradScaler(device.type, enabled=precision == "fp16"),
    )
    state = TrainState(TrainResult(), copy.deepcopy(model.state_dict()))
    _resume(checkpoint, fingerprint, opt, state)
    result = state.result

    def snapshot(finished: bool = False) -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, _checkpoint(opt, state, fingerprint, finished))

    progress = _Progress(total_steps, enabled=rank == 0 and sys.stderr.isatty(), initial=result.steps)
    timer_rows, timer_start = 0, _now(device)
    model.train()
    for epoch in range(state.epoch, recipe.epochs):
        state.epoch, skip = epoch, state.batch_in_epoch
        for batch_in_epoch, index in enumerate(epoch_batches(len(train), recipe.batch_size, seed, epoch, rank, world)):
            if batch_in_epoch < skip:
                continue
            batch = train.take(index.to(device))
            loss = _step(opt, batch, recipe, device, precision)
            result.steps += 1
            # On CUDA, summing on the device avoids a host sync every step.
            state.epoch_loss_sum += loss.detach() * len(batch) if device.type == "cuda" else loss.item() * len(batch)
            state.epoch_rows += len(batch)
            timer_rows += len(batch)
            progress.update(loss.item() if progress.enabled else None)
            if result.steps % recipe.checkpoint_every_steps == 0:
                state.batch_in_epoch = batch_in_epoch + 1
                snapshot()

        record = _end_epoch(opt, state, evaluate_loss(model, val, device, precision), rank)
        state.epoch, state.batch_in_epoch = epoch + 1, 0
        snapshot()
        if on_epoch is not None:
            on_epoch(record)
        if restore_best and state.bad_epochs >= recipe.patience:
            result.stopped_early = True
            log.info(
                "early stopping: no improvement for %d epochs; restoring epoch %d", state.bad_epochs, result.best_epoch
            )
            break

    elapsed = _now(device) - timer_start
    result.samples_per_second = timer_rows / elapsed if elapsed > 0 else 0.0
    progress.close()
    if restore_best:
        model.load_state_dict(state.best_state)
    state.epoch, state.batch_in_epoch = recipe.epochs, 0
    snapshot(finished=True)
    return result


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class _Progress:
    """A progress bar in an interactive terminal; nothing otherwise (epochs are logged as lines)."""

    def __init__(self, total: int, enabled: bool, initial: int = 0) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, loss: float | None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def iterate_forever(batches: Callable[[int], list[torch.Tensor]]) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1
