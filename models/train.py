"""`train` stage: recipe checks, LR range test, then the training loop; writes the model and its reports.

Run by DVC as `python -m models.train`, or across processes with
`torchrun --standalone --nproc_per_node N -m models.train` (gloo on CPU, NCCL on GPU; rank 0 writes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from loopline.atomic import StagedOutputs, write_json
from loopline.config import Params, TunedParams, load_params, load_tuned, training_runs
from loopline.features import encode_features, encode_target
from loopline.metrics import task_metrics
from loopline.paths import MODEL_FILES, SPLITS, ProjectPaths
from loopline.schema import FeatureSchema, load_schema
from loopline.stage import run_stage
from models.checks import CheckResult, RecipeCheckError, raise_on_failures, run_recipe_checks
from models.lr_finder import LRRangeResult, lr_range_test, plot_lr_range
from models.network import EnsembleNet, TabularNet, build_spec, choose_target_transform
from models.torch_predict import predict
from models.trainer import (
    Batch,
    TrainResult,
    make_batch,
    resolve_device,
    resolve_precision,
    seed_everything,
    train_model,
)

log = logging.getLogger(__name__)


REFIT_SPLITS = {"off": (), "train_val": ("train", "val"), "all": ("train", "val", "test")}
"""What each train.refit trains the served network on."""


@dataclass
class PreparedSplits:
    schema: FeatureSchema
    stats: dict[str, Any]
    frames: dict[str, pd.DataFrame]
    weights: dict[str, np.ndarray] | None = None
    """Each split's row weights (recency, prepare.window.half_life_days; times a coreset's weights);
    None: equal weights. The selection run weighs its training rows; a refit weighs every row it learns."""
    weigh_validation: bool = False
    """The validation rows are a coreset: their weights make the validation loss estimate the whole
    split's (recency weights alone never weigh validation)."""

    def batch(self, split: str) -> Batch:
        frame = self.frames[split]
        enc = encode_features(frame, self.schema)
        weighed = split == "train" or (split == "val" and self.weigh_validation)
        weight = self.weights[split] if self.weights is not None and weighed else None
        return make_batch(enc.numeric, enc.categorical, encode_target(frame, self.schema), weight)

    def refit_batch(self, splits: tuple[str, ...]) -> Batch:
        """The rows of `splits` together, in time order for time-split data (train, val, test), each
        with its own recency weight."""
        frame = pd.concat([self.frames[s] for s in splits], ignore_index=True)
        enc = encode_features(frame, self.schema)
        weight = None
        if self.weights is not None:
            weight = np.concatenate([self.weights[s] for s in splits]).astype(np.float32)
        return make_batch(enc.numeric, enc.categorical, encode_target(frame, self.schema), weight)


def load_prepared(paths: ProjectPaths) -> PreparedSplits:
    schema = load_schema(paths.prepared_schema)
    stats = json.loads(paths.preprocessing_stats.read_text())
    frames = {name: pd.read_parquet(paths.split(name)) for name in ("train", "val", "test")}
    return PreparedSplits(schema, stats, frames, training_weights(paths))


def training_weights(paths: ProjectPaths) -> dict[str, np.ndarray] | None:
    """Each split's row weights from prepare's row record, when prepare weighted them."""
    if not paths.prepared_rows.is_file():
        return None
    return split_weights(pd.read_parquet(paths.prepared_rows, columns=["split", "weight"]))


def split_weights(rows: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """The row record's weights per split (None when every row weighs 1: equal weights)."""
    if np.all(rows["weight"].to_numpy() == 1.0):
        return None
    return {name: rows.loc[rows["split"] == name, "weight"].to_numpy(dtype=np.float32) for name in SPLITS}


def build_model(data: PreparedSplits, params: Params) -> TabularNet:
    """A fresh network: initial weights fixed by the seed, preprocessing fitted, output at the prior."""
    net_params = params.train.model
    transform = choose_target_transform(net_params.target_transform, data.schema.task.value, data.stats)
    spec = build_spec(
        data.schema, data.stats, net_params.hidden, net_params.dropout, net_params.embedding_dim, transform
    )
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


@dataclass
class Fitted:
    """One network trained by the recipe, with what its training found."""

    model: TabularNet
    result: TrainResult
    """The selection run's (early-stopped on the validation split)."""
    lr: float
    lr_range: LRRangeResult | None
    checks: list[CheckResult]
    refit: TrainResult | None = None
    """The refit run's, when train.refit trained `model` afresh on more rows."""
    holdout: TabularNet | None = None
    """The selection run's network when `model` learned the test rows too (train.refit: all): the test
    split judges this one."""


def fit(
    data: PreparedSplits,
    params: Params,
    *,
    run_checks: bool = True,
    find_lr: bool = True,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    rank: int = 0,
    world: int = 1,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    refit: tuple[str, ...] | None = None,
) -> Fitted:
    """Build, check, and train one network on data's train split, early-stopped on its val split; then,
    with train.refit, train a fresh one on the train and val rows for the selected number of epochs.

    Recipe checks raise on failure (RecipeCheckError); the LR range test runs when `find_lr` or when
    train.lr is 'auto'. `on_epoch` sees every epoch's losses of the selection run (the tuner's pruning
    hook; a tuner passes `refit=()`: a trial is scored by its selection run). `refit` names the splits
    to refit on (default: train.refit's)."""
    recipe = params.train
    seed_everything(params.seed, recipe.deterministic)
    train, val = data.batch("train"), data.batch("val")
    model = build_model(data, params)
    done = completed_preamble(checkpoint, fingerprint)
    if done is not None:  # a resumed run: the checks and the LR range test finished before the interruption
        checks, lr_range = done
        log.info("resuming: recipe checks and LR range test completed before the interruption; not run again")
    else:
        checks = []
        if run_checks:
            checks = run_recipe_checks(model, train, val, recipe, params.seed)
            raise_on_failures(checks)
        lr_range = lr_range_test(model, train, recipe, params.seed) if find_lr or recipe.lr == "auto" else None
        if checkpoint is not None and rank == 0:
            save_preamble(checkpoint, fingerprint, checks, lr_range)
    lr = lr_range.suggested_lr if recipe.lr == "auto" else float(recipe.lr)
    device = resolve_device(recipe.device)
    torch.manual_seed(params.seed + 1)  # training's own random stream, whichever checks ran before
    result = train_model(
        model,
        train,
        val,
        recipe,
        seed=params.seed,
        lr=lr,
        device=device,
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        rank=rank,
        world=world,
        on_epoch=on_epoch,
    )
    if refit is None:
        refit = REFIT_SPLITS[recipe.refit]
    refit_result, holdout = None, None
    if refit:
        selected = model
        model, refit_result = refit_model(
            data, params, refit, result.best_epoch + 1, lr, device, checkpoint, fingerprint, rank, world
        )
        holdout = selected if "test" in refit else None
    if checkpoint is not None and rank == 0:
        preamble_file(checkpoint).unlink(missing_ok=True)  # the run finished: a new one checks afresh
    return Fitted(model, result, lr, lr_range, checks, refit_result, holdout)


def refit_model(
    data: PreparedSplits,
    params: Params,
    splits: tuple[str, ...],
    epochs: int,
    lr: float,
    device: torch.device,
    checkpoint: Path | None,
    fingerprint: str,
    rank: int,
    world: int,
) -> tuple[TabularNet, TrainResult]:
    """A fresh network (same seed, same preprocessing) trained on `splits` for the `epochs` the selection
    run chose, keeping its last weights; resumable from its own checkpoint."""
    recipe = params.train.model_copy(update={"epochs": epochs})
    model = build_model(data, params)
    torch.manual_seed(params.seed + 2)
    log.info("refit on %s for %d epochs", " + ".join(splits), epochs)
    result = train_model(
        model,
        data.refit_batch(splits),
        data.batch("val"),
        recipe,
        seed=params.seed,
        lr=lr,
        device=device,
        checkpoint=None if checkpoint is None else checkpoint.with_name(f"{checkpoint.stem}-refit.pt"),
        fingerprint=f"{fingerprint}:refit:{'+'.join(splits)}:{epochs}",
        rank=rank,
        world=world,
        restore_best=False,
    )
    return model, result


# A run's preamble (recipe checks, LR range test) is recorded beside its checkpoint as soon as it
# completes, so that a run resumed after an interruption does not repeat it.
def preamble_file(checkpoint: Path) -> Path:
    return checkpoint.with_name(f"{checkpoint.stem}.preamble.json")


def save_preamble(
    checkpoint: Path, fingerprint: str, checks: list[CheckResult], lr_range: LRRangeResult | None
) -> None:
    write_json(
        preamble_file(checkpoint),
        {
            "fingerprint": fingerprint,
            "checks": [c.to_dict() for c in checks],
            "lr_range": lr_range.to_dict() if lr_range else None,
        },
    )


def completed_preamble(
    checkpoint: Path | None, fingerprint: str
) -> tuple[list[CheckResult], LRRangeResult | None] | None:
    """The checks and LR range test an interrupted run of the same settings and data completed."""
    if checkpoint is None or not preamble_file(checkpoint).is_file():
        return None
    record = json.loads(preamble_file(checkpoint).read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    lr_range = LRRangeResult(**record["lr_range"]) if record["lr_range"] else None
    return [CheckResult(**c) for c in record["checks"]], lr_range


def run_train(paths: ProjectPaths | None = None) -> dict[str, Any]:
    """The train stage: params.yaml with tuned.yaml's overrides applied; one network, or each member of
    a tuned ensemble, trained by the same recipe (checks, LR range test, loop) and saved as one model."""
    paths = paths or ProjectPaths.here()
    rank, world = init_distributed()
    tuned = load_tuned(paths.tuned_params)
    runs = training_runs(load_params(paths.params), tuned, str(paths.tuned_params))
    if not tuned.empty:
        log.info(
            "applying %s (study %s, trial %s)%s",
            paths.tuned_params.name,
            tuned.study.get("name", "?"),
            tuned.study.get("trial", "?"),
            f": an ensemble of {len(runs)}" if len(runs) > 1 else "",
        )
    data = load_prepared(paths)
    device = resolve_device(runs[0].train.device)
    precision = resolve_precision(runs[0].train.precision, device)
    log.info("device %s, precision %s, %d process(es)", device, precision, world)

    # train.coreset: the networks learn a weighted sample; metrics below are on the whole splits
    from tuning.coreset import coreset_splits

    learned = coreset_splits(data, runs[0], runs[0].train.coreset)
    fitted = fit_runs(paths, learned, runs, rank, world)
    model = one_model(fitted)
    holdout = one_model([replace(f, model=f.holdout) for f in fitted]) if fitted[0].holdout is not None else None
    rank_gap = max(max_parameter_gap_across_ranks(f.model) for f in fitted) if world > 1 else 0.0
    model.cpu().eval()
    judged = model if holdout is None else holdout.cpu().eval()  # the network that never saw the test rows
    if rank != 0:
        dist.barrier()
        return {}
    if rank_gap > 0:
        log.warning("ranks disagree: parameters differ by up to %.3g across processes", rank_gap)

    metrics = {
        split: task_metrics(
            data.schema.task.value,
            encode_target(data.frames[split], data.schema),
            predict(judged, data.frames[split], data.schema),
        )
        for split in ("val", "test")
    }
    records = [training_record(f, device, precision, world, rank_gap) for f in fitted]
    training, checks = training_report(fitted, records, tuned)
    training["refit_on"] = params_refit(runs[0])
    training["rows_learned"] = {name: len(frame) for name, frame in learned.frames.items()}
    if runs[0].train.coreset is not None:
        training["coreset"] = runs[0].train.coreset.model_dump(mode="json")
    summary = {
        "val": metrics["val"],
        "test": metrics["test"],
        "best_epoch": fitted[0].result.best_epoch,
        "epochs_run": len(fitted[0].result.history),
        "refit_on": params_refit(runs[0]),
        "judged_by": "holdout network (the selection run)" if holdout is not None else "the served network",
        "lr": fitted[0].lr,
        **({"ensemble_members": len(fitted)} if len(fitted) > 1 else {}),
    }
    save_outputs(paths, data, runs, fitted, model, training, checks, summary, holdout)
    if world > 1:
        dist.barrier()
    log.info("val %s", _fmt(metrics["val"]))
    log.info("test %s", _fmt(metrics["test"]))
    return summary


def params_refit(params: Params) -> str:
    """What the served network learned from: "train" (the selection run's), "train+val" or
    "train+val+test" (a refit)."""
    return "+".join(REFIT_SPLITS[params.train.refit]) or "train"


def fit_runs(paths: ProjectPaths, data: PreparedSplits, runs: list[Params], rank: int, world: int) -> list[Fitted]:
    """Each run's network fitted by the recipe, resumable from its own checkpoint; a failed recipe check
    leaves its report (reports/train/checks.json stays with the model it describes)."""
    fitted: list[Fitted] = []
    for i, params in enumerate(runs):
        member = f"member {i}: " if len(runs) > 1 else ""
        checkpoint = paths.checkpoint if len(runs) == 1 else paths.checkpoint.with_name(f"train-member{i}.pt")
        try:
            one = fit(
                data, params, checkpoint=checkpoint, fingerprint=run_fingerprint(params, paths), rank=rank, world=world
            )
        except RecipeCheckError as exc:
            if rank == 0:
                write_json(paths.failed_checks, exc.results_dicts())
                log.info("recipe check report of this failed run: %s", paths.failed_checks)
            raise
        log.info(
            "%sLR range test suggests %.3g; trained with lr %.3g%s",
            member,
            one.lr_range.suggested_lr,
            one.lr,
            " (train.lr: auto)" if params.train.lr == "auto" else "",
        )
        fitted.append(one)
    return fitted


def one_model(fitted: list[Fitted]) -> TabularNet | EnsembleNet:
    """The network, or the fitted members averaged inside one ensemble network."""
    if len(fitted) == 1:
        return fitted[0].model
    model = EnsembleNet([f.model.spec for f in fitted])
    for target, f in zip(model.members, fitted):
        target.load_state_dict(f.model.state_dict())
    return model


def training_report(
    fitted: list[Fitted], records: list[dict[str, Any]], tuned: TunedParams
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """training.json (the first run's record, the recipe checks, the ensemble's records, the tuning that
    chose the settings) and the recipe checks' list (each member's, for an ensemble)."""
    checks = [
        {**c.to_dict(), **({"member": i} if len(fitted) > 1 else {})} for i, f in enumerate(fitted) for c in f.checks
    ]
    training = {
        **records[0],
        "checks": checks,
        "skipped_checks": sorted({c["name"] for c in checks if c.get("skipped")}),
    }
    if len(fitted) > 1:
        training["ensemble"] = records
    if not tuned.empty:
        training["tuned"] = tuned.model_dump()
    return training, checks


def save_outputs(
    paths: ProjectPaths,
    data: PreparedSplits,
    runs: list[Params],
    fitted: list[Fitted],
    model: TabularNet | EnsembleNet,
    training: dict[str, Any],
    checks: list[dict[str, Any]],
    summary: dict[str, Any],
    holdout: TabularNet | EnsembleNet | None = None,
) -> None:
    """The model directory, the stage's metrics, reports, plots and DVCLive folder, all or nothing."""
    with StagedOutputs() as out:
        model_dir = out.path(paths.model_dir, directory=True)
        torch.save(model.state_dict(), model_dir / MODEL_FILES["weights"])
        if holdout is not None:
            torch.save(holdout.state_dict(), model_dir / MODEL_FILES["holdout"])
        spec = {"ensemble": [f.model.spec.to_dict() for f in fitted]} if len(fitted) > 1 else model.spec.to_dict()
        write_json(model_dir / MODEL_FILES["spec"], spec)
        write_json(model_dir / MODEL_FILES["schema"], data.schema.to_dict())
        write_json(model_dir / MODEL_FILES["stats"], data.stats)
        write_json(model_dir / MODEL_FILES["training"], training)
        write_json(out.path(paths.train_metrics), summary)
        write_json(out.path(paths.recipe_checks), checks)
        write_json(out.path(paths.train_reports_dir / "lr_range.json"), fitted[0].lr_range.to_dict())
        plot_lr_range(fitted[0].lr_range, out.path(paths.train_reports_dir / "lr_range.png"))
        _plot_losses([f.result.history for f in fitted], out.path(paths.train_reports_dir / "loss_curves.png"))
        write_tracking(out.path(paths.dvclive_dir, directory=True), runs, [f.result.history for f in fitted])


def training_record(f: Fitted, device: torch.device, precision: str, world: int, rank_gap: float) -> dict[str, Any]:
    r = f.result
    return {
        "device": str(device),
        "precision": precision,
        "processes": world,
        "lr": f.lr,
        "lr_range_suggestion": f.lr_range.suggested_lr if f.lr_range else None,
        "best_epoch": r.best_epoch,
        "best_val_loss": r.best_val_loss,
        "stopped_early": r.stopped_early,
        "steps": r.steps,
        "samples_per_second": r.samples_per_second,
        "resumed_from": r.resumed_from,
        "max_parameter_gap_across_ranks": rank_gap,
        "history": r.history,
        "refit": None
        if f.refit is None
        else {
            "epochs": len(f.refit.history),
            "steps": f.refit.steps,
            "resumed_from": f.refit.resumed_from,
            "history": f.refit.history,
        },
    }


def write_tracking(directory: Path, runs: list[Params], histories: list[list[dict[str, float]]]) -> None:
    """The run's DVCLive log: params and, per epoch, train and validation loss and the learning rate
    (per member, prefixed member<i>/, for an ensemble).

    Written from the whole history once training has finished (a resumed run's history includes the
    epochs before the interruption), into the staged directory, so a failed run leaves the last log.
    """
    from dvclive import Live

    live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
    if len(runs) == 1:
        live.log_params({"seed": runs[0].seed, "train": runs[0].train.model_dump(mode="json")})
    else:
        live.log_params(
            {
                "seed": runs[0].seed,
                "ensemble": {f"member{i}": r.train.model_dump(mode="json") for i, r in enumerate(runs)},
            }
        )
    for step in range(max(len(h) for h in histories)):
        for i, history in enumerate(histories):
            if step >= len(history):
                continue
            prefix = f"member{i}/" if len(histories) > 1 else ""
            for name, key in (("train/loss", "train_loss"), ("val/loss", "val_loss"), ("train/lr", "lr")):
                live.log_metric(prefix + name, history[step][key])
        live.next_step()
    live.end()


def _plot_losses(histories: list[list[dict[str, float]]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, history in enumerate(histories):
        member = f" (member {i})" if len(histories) > 1 else ""
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["train_loss"] for h in history], label=f"train{member}")
        ax.plot(epochs, [h["val_loss"] for h in history], label=f"validation{member}", linestyle="--")
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
