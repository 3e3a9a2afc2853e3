"""`train` stage: recipe checks, LR range test, then the training loop; writes the model and its reports.

Run by DVC as `python -m models.train`, or across processes with
`torchrun --standalone --nproc_per_node N -m models.train` (gloo on CPU, NCCL on GPU; rank 0 writes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist

from loopline.atomic import StagedOutputs, write_json
from loopline.cli import run_stage
from loopline.config import Params, load_params
from loopline.features import encode_features, encode_target
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, schema_from_dict
from models.checks import raise_on_failures, run_recipe_checks
from models.inference import MODEL_FILES, predict
from models.lr_finder import lr_range_test, plot_lr_range
from models.metrics import task_metrics
from models.network import TabularNet, build_spec, choose_target_transform
from models.trainer import Batch, make_batch, resolve_device, resolve_precision, seed_everything, train_model

log = logging.getLogger(__name__)


@dataclass
class PreparedSplits:
    schema: FeatureSchema
    stats: dict[str, Any]
    frames: dict[str, pd.DataFrame]

    def batch(self, split: str) -> Batch:
        frame = self.frames[split]
        enc = encode_features(frame, self.schema)
        return make_batch(enc.numeric, enc.categorical, encode_target(frame, self.schema))


def load_prepared(paths: ProjectPaths) -> PreparedSplits:
    schema = schema_from_dict(json.loads(paths.prepared_schema.read_text()), source=str(paths.prepared_schema))
    stats = json.loads(paths.preprocessing_stats.read_text())
    frames = {name: pd.read_parquet(paths.split(name)) for name in ("train", "val", "test")}
    return PreparedSplits(schema, stats, frames)


def build_model(data: PreparedSplits, params: Params) -> TabularNet:
    """A fresh network: initial weights fixed by the seed, preprocessing fitted, output at the prior."""
    cfg = params.train.model
    transform = choose_target_transform(cfg.target_transform, data.schema.task.value, data.stats)
    spec = build_spec(data.schema, data.stats, cfg.hidden, cfg.dropout, cfg.embedding_dim, transform)
    torch.manual_seed(params.seed)
    model = TabularNet(spec)
    model.fit_preprocessing(data.schema, data.stats)
    model.init_output_bias(data.stats)
    return model


def run_fingerprint(params: Params, paths: ProjectPaths) -> str:
    """What a checkpoint must match to be resumed: the training settings, seed and training data."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"seed": params.seed, "train": params.train.model_dump()}, sort_keys=True).encode())
    digest.update(paths.split("train").read_bytes())
    return digest.hexdigest()


def init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def max_parameter_gap_across_ranks(model: TabularNet) -> float:
    """Largest difference between any rank's parameters and rank 0's: DDP must keep them identical."""
    flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def run_train(paths: ProjectPaths | None = None) -> dict[str, Any]:
    paths = paths or ProjectPaths.here()
    rank, world = init_distributed()
    params = load_params(paths.params)
    cfg = params.train
    seed_everything(params.seed, cfg.deterministic)
    data = load_prepared(paths)
    train, val = data.batch("train"), data.batch("val")
    model = build_model(data, params)

    checks = run_recipe_checks(model, train, val, cfg, params.seed)
    if rank == 0 and not all(c.passed for c in checks):
        # reports/train/checks.json stays with the model it describes; this run's report goes aside.
        write_json(paths.failed_checks, [c.to_dict() for c in checks])
        log.info("recipe check report of this failed run: %s", paths.failed_checks)
    raise_on_failures(checks)

    lr_range = lr_range_test(model, train, cfg, params.seed)
    lr = lr_range.suggested_lr if cfg.lr == "auto" else float(cfg.lr)
    log.info("LR range test suggests %.3g; training with lr %.3g%s", lr_range.suggested_lr, lr,
             " (train.lr: auto)" if cfg.lr == "auto" else "")

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    log.info("device %s, precision %s, %d process(es)", device, precision, world)
    torch.manual_seed(params.seed + 1)  # training's own random stream, whichever checks ran before
    result = train_model(model, train, val, cfg, seed=params.seed, lr=lr, device=device,
                         checkpoint=paths.checkpoint, fingerprint=run_fingerprint(params, paths),
                         rank=rank, world=world)
    rank_gap = max_parameter_gap_across_ranks(model) if world > 1 else 0.0
    model.cpu().eval()
    if rank != 0:
        dist.barrier()
        return {}
    if rank_gap > 0:
        log.warning("ranks disagree: parameters differ by up to %.3g across processes", rank_gap)

    metrics = {split: task_metrics(data.schema.task.value, encode_target(data.frames[split], data.schema),
                                   predict(model, data.frames[split], data.schema))
               for split in ("val", "test")}
    training = {
        "device": str(device), "precision": precision, "processes": world, "lr": lr,
        "lr_range_suggestion": lr_range.suggested_lr, "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early, "steps": result.steps,
        "samples_per_second": result.samples_per_second, "resumed_from": result.resumed_from,
        "max_parameter_gap_across_ranks": rank_gap,
        "skipped_checks": [c.name for c in checks if c.skipped], "history": result.history,
    }
    summary = {"val": metrics["val"], "test": metrics["test"], "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), "lr": lr}
    with StagedOutputs() as out:
        model_dir = out.path(paths.model_dir, directory=True)
        torch.save(model.state_dict(), model_dir / MODEL_FILES["weights"])
        write_json(model_dir / MODEL_FILES["spec"], model.spec.to_dict())
        write_json(model_dir / MODEL_FILES["schema"], data.schema.to_dict())
        write_json(model_dir / MODEL_FILES["stats"], data.stats)
        write_json(model_dir / MODEL_FILES["training"], {**training, "checks": [c.to_dict() for c in checks]})
        write_json(out.path(paths.train_metrics), summary)
        write_json(out.path(paths.recipe_checks), [c.to_dict() for c in checks])
        write_json(out.path(paths.train_reports_dir / "lr_range.json"), lr_range.to_dict())
        plot_lr_range(lr_range, out.path(paths.train_reports_dir / "lr_range.png"))
        _plot_losses(result.history, out.path(paths.train_reports_dir / "loss_curves.png"))
        write_tracking(out.path(paths.dvclive_dir, directory=True), params, result.history)
    if world > 1:
        dist.barrier()
    log.info("val %s", _fmt(metrics["val"]))
    log.info("test %s", _fmt(metrics["test"]))
    return summary


def write_tracking(directory: Path, params: Params, history: list[dict[str, float]]) -> None:
    """The run's DVCLive log: params and, per epoch, train and validation loss and the learning rate.

    Written from the whole history once training has finished (a resumed run's history includes the
    epochs before the interruption), into the staged directory, so a failed run leaves the last log.
    """
    from dvclive import Live

    live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
    live.log_params({"seed": params.seed, "train": params.train.model_dump(mode="json")})
    for record in history:
        for name, key in (("train/loss", "train_loss"), ("val/loss", "val_loss"), ("train/lr", "lr")):
            live.log_metric(name, record[key])
        live.next_step()
    live.end()


def _plot_losses(history: list[dict[str, float]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Loss curves")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def main() -> int:
    code = run_stage("train", run_train)
    if dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    raise SystemExit(main())


