"""Cross-validation over the training and validation rows (the test split stays untouched).

- rolling: rolling-origin folds for time-ordered data. The rows, in time order, are cut into folds + 1
  blocks at changes of the time value; fold i trains on blocks 0..i and validates on block i + 1, so a
  fold never trains on rows later than the ones it is judged on;
- kfold: k folds; by group when the prepare split is by group (no group on both sides), shuffled with
  the seed when rows are independent, refused for time-split data (it would train on the future).

Each fold refits the preprocessing statistics (normalisation, vocabularies, target scale) on its own
training rows. `cross_validate` is used by the tuner (tune.cross_validate) and by `python -m
tuning.crossval`, which reports every fold's metrics with their mean and spread under reports/cv/.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from dataprep.stats import fit_preprocessing_stats
from loopline.atomic import StagedOutputs, write_json
from loopline.config import Params, load_params, load_tuned, training_runs
from loopline.errors import ConfigError, DataError
from loopline.features import encode_target
from loopline.metrics import task_metrics
from loopline.paths import ProjectPaths
from loopline.stage import run_stage
from models.torch_predict import predict
from models.train import PreparedSplits, fit, load_prepared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray
    """Row positions in the pool that the fold trains on."""
    val: np.ndarray
    """Row positions it is validated on."""


def cv_pool(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The rows cross-validation may use: training and validation, never test."""
    return pd.concat([frames["train"], frames["val"]], ignore_index=True)


def rolling_origin_folds(times: pd.Series | np.ndarray, folds: int) -> list[Fold]:
    """Expanding-window folds in time order; cuts fall only where the time value changes."""
    values = pd.Series(times).reset_index(drop=True)
    order = np.argsort(values.to_numpy(), kind="mergesort")
    ordered = values.to_numpy()[order]
    n = len(ordered)
    changes = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    if changes.size < folds:
        raise DataError(
            f"rolling-origin cross-validation with {folds} folds needs at least {folds + 1} distinct "
            f"time values; the rows have {changes.size + 1}"
        )
    cuts: list[int] = []
    for i in range(1, folds + 1):
        candidates = changes[changes > (cuts[-1] if cuts else 0)]
        remaining_needed = folds - i
        if candidates.size <= remaining_needed:
            raise DataError(f"cannot cut {folds + 1} time blocks: too few distinct time values")
        usable = candidates[: candidates.size - remaining_needed]
        cuts.append(int(usable[np.argmin(np.abs(usable - n * i / (folds + 1)))]))
    bounds = [*cuts, n]
    return [Fold(i, order[: bounds[i]], order[bounds[i] : bounds[i + 1]]) for i in range(folds)]


def kfold_folds(n: int, folds: int, seed: int, groups: pd.Series | np.ndarray | None = None) -> list[Fold]:
    """k folds of shuffled rows, or of shuffled whole groups when `groups` is given."""
    rng = np.random.default_rng(seed)
    if groups is None:
        if n < folds:
            raise DataError(f"{folds}-fold cross-validation needs at least {folds} rows; there are {n}")
        fold_of = np.empty(n, dtype=np.int64)
        fold_of[rng.permutation(n)] = np.arange(n) % folds
    else:
        codes, uniques = pd.factorize(pd.Series(groups).reset_index(drop=True))
        if len(uniques) < folds:
            raise DataError(
                f"{folds}-fold cross-validation by group needs at least {folds} groups; there are {len(uniques)}"
            )
        group_fold = np.empty(len(uniques), dtype=np.int64)
        group_fold[rng.permutation(len(uniques))] = np.arange(len(uniques)) % folds
        fold_of = group_fold[codes]
    everything = np.arange(n)
    return [Fold(i, everything[fold_of != i], everything[fold_of == i]) for i in range(folds)]


def make_folds(pool: pd.DataFrame, params: Params, schema) -> list[Fold]:
    cv = params.cv
    if cv.method == "rolling":
        if schema.time_column is None:
            raise ConfigError(
                f"params.yaml cv.method: rolling needs a time_column in schema {schema.name!r}; "
                "use kfold for data without time order"
            )
        return rolling_origin_folds(pool[schema.time_column], cv.folds)
    split = params.prepare.split.method
    if split == "time":
        raise ConfigError(
            "params.yaml cv.method: kfold would train on rows later than those it validates on, "
            "because prepare.split.method is time; use cv.method: rolling"
        )
    groups = pool[schema.group_column] if split == "group" else None
    return kfold_folds(len(pool), cv.folds, params.seed, groups)


def fold_data(data: PreparedSplits, pool: pd.DataFrame, fold: Fold) -> PreparedSplits:
    """The fold as PreparedSplits: its rows, with statistics refitted on its training rows."""
    train = pool.iloc[fold.train].reset_index(drop=True)
    val = pool.iloc[fold.val].reset_index(drop=True)
    stats = fit_preprocessing_stats(train, data.schema, data.stats.get("missing_fills", {}))
    return PreparedSplits(data.schema, stats, {"train": train, "val": val, "test": data.frames["test"]})


@dataclass
class CVReport:
    method: str
    folds: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(method: str, folds: list[dict[str, Any]]) -> CVReport:
    names = [k for k, v in folds[0].items() if isinstance(v, float)]
    values = {k: np.array([f[k] for f in folds], dtype=np.float64) for k in names}
    return CVReport(
        method,
        folds,
        {k: float(v.mean()) for k, v in values.items()},
        {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
    )


def cross_validate(
    data: PreparedSplits,
    params: Params,
    *,
    on_fold: Callable[[int, float], None] | None = None,
    run_checks: bool = False,
    find_lr: bool = False,
) -> CVReport:
    """Train `params` on every fold; per fold: rows, time range, best validation loss and the task's
    metrics on its validation rows. `on_fold(i, mean_val_loss_so_far)` may raise to stop early."""
    pool = cv_pool(data.frames)
    time_column = data.schema.time_column
    task = data.schema.task.value
    results: list[dict[str, Any]] = []
    for fold in make_folds(pool, params, data.schema):
        part = fold_data(data, pool, fold)
        fitted = fit(part, params, run_checks=run_checks, find_lr=find_lr, refit=())
        val = part.frames["val"]
        metrics = task_metrics(task, encode_target(val, data.schema), predict(fitted.model, val, data.schema))
        row: dict[str, Any] = {
            "fold": fold.index,
            "train_rows": int(fold.train.size),
            "val_rows": int(fold.val.size),
            "best_val_loss": float(fitted.result.best_val_loss),
            **metrics,
        }
        if time_column is not None:
            row["train_time"] = [
                str(part.frames["train"][time_column].min()),
                str(part.frames["train"][time_column].max()),
            ]
            row["val_time"] = [str(val[time_column].min()), str(val[time_column].max())]
        results.append(row)
        log.info(
            "fold %d: %d training rows, %d validation rows, val loss %.5f",
            fold.index,
            fold.train.size,
            fold.val.size,
            fitted.result.best_val_loss,
        )
        if on_fold is not None:
            on_fold(fold.index, float(np.mean([r["best_val_loss"] for r in results])))
    return summarise(params.cv.method, results)


def run_crossval(paths: ProjectPaths | None = None) -> CVReport:
    """The training settings (params.yaml with tuned.yaml applied) cross-validated per params.yaml `cv:`."""
    paths = paths or ProjectPaths.here()
    params = training_runs(load_params(paths.params), load_tuned(paths.tuned_params), str(paths.tuned_params))[0]
    report = cross_validate(load_prepared(paths), params)
    with StagedOutputs() as out:
        write_json(out.path(paths.cv_reports_dir / "metrics.json"), report.to_dict())
    for name in report.mean:
        log.info("%-16s mean %.5f  std %.5f", name, report.mean[name], report.std[name])
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(
        prog="loopline cv",
        description="Cross-validation of the training settings over the training and validation "
        "rows (cv: in params.yaml; tune.cross_validate scores trials with it). Writes reports/cv/metrics.json.",
    ).parse_args(argv)
    return run_stage("crossval", run_crossval)


if __name__ == "__main__":
    raise SystemExit(main())
