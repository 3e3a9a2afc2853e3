"""`tune`: hyperparameter search with Optuna over the train stage's own recipe.

    python -m tuning.search [--trials 20] [--timeout-minutes 30] [--workers 2]

The search space, sampler (TPE, random, grid), pruner (median, successive halving) and budget are in
params.yaml `tune:`. Each trial trains the network the way `train` does (same data, seed, loop, early
stopping; recipe checks are left to the final training) and is scored by its best validation loss, or by
the mean over the `cv:` folds with tune.cross_validate. The validation loss of every epoch (every fold
with cross-validation) is reported to the pruner, which stops trials that are clearly worse than the
median of earlier ones at the same epoch.

The study lives in an Optuna storage: the SQLite file .state/tune/study.db by default, or any database
URL in tune.storage / $LOOPLINE_TUNE_STORAGE, which lets workers on several machines share a study:

    python -m tuning.search --worker --storage postgresql+psycopg://... --study bike-search --trials 10   # each machine
    python -m tuning.search --report --storage postgresql+psycopg://... --study bike-search                # once, at the end

Every trial is recorded: in the study (params, value, per-epoch losses, state) and as a DVCLive folder
reports/tune/<study>/trials/<number>/ (params, per-epoch losses, validation metrics). The report writes
summary.json, trials.csv, optimisation-history and parameter-importance plots (PNG) next to them, and
the best settings to tuned.yaml, which the train stage applies: the winner is retrained by `dvc repro`
and judged by the gate like any other candidate. With tune.ensemble.top_k > 1, tuned.yaml lists the
best k trials' settings and `train` averages those networks inside one model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from loopline.atomic import write_json
from loopline.config import Params, SearchDimension, TuneParams, load_params, locate, with_overrides
from loopline.errors import ConfigError, LooplineError
from loopline.features import encode_target
from loopline.metrics import task_metrics
from loopline.paths import ProjectPaths
from loopline.settings import Settings, variable
from models.torch_predict import predict
from models.train import PreparedSplits, fit, load_prepared
from models.trainer import TrainingDiverged
from tuning.coreset import coreset_splits
from tuning.crossval import cross_validate

log = logging.getLogger(__name__)
NOT_SET = object()


class TuningError(LooplineError):
    """The search could not run or produced no usable trial."""


# ------------------------------------------------------------------------------------- search space
def _plain_choices(dim: SearchDimension) -> bool:
    return all(c is None or isinstance(c, (bool, int, float, str)) for c in dim.choices or [])


def _encode(dim: SearchDimension, value: Any) -> Any:
    """Optuna's categorical values must be scalars: lists (e.g. hidden layer sizes) travel as JSON."""
    return value if _plain_choices(dim) else json.dumps(value)


def _decode(dim: SearchDimension, value: Any) -> Any:
    return value if _plain_choices(dim) else json.loads(value)


def active(dim: SearchDimension, chosen: dict[str, Any]) -> bool:
    """A conditional dimension is searched only when every parameter it depends on has its value."""
    return all(chosen.get(key, NOT_SET) == value for key, value in dim.when.items())


def suggest(trial: optuna.Trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    """One trial's values for the active dimensions of the space, in the order the space lists them."""
    chosen: dict[str, Any] = {}
    for key, dim in space.items():
        if not active(dim, chosen):
            continue
        if dim.choices is not None:
            value = trial.suggest_categorical(key, [_encode(dim, c) for c in dim.choices])
            chosen[key] = _decode(dim, value)
        elif dim.int_:
            chosen[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            chosen[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return chosen


def grid_space(space: dict[str, SearchDimension]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for key, dim in space.items():
        values = dim.choices if dim.choices is not None else dim.grid
        if values is None:
            raise ConfigError(
                f"params.yaml tune.space.{key}: the grid sampler needs `grid: [values]` for a range (or `choices`)"
            )
        grid[key] = [_encode(dim, v) for v in values]
    return grid


def _dotted(params: Params, key: str) -> Any:
    node, name = locate(params.model_dump(by_alias=True), key, "params.yaml tune.space")
    if name not in node:
        raise ConfigError(f"params.yaml tune.space: {key!r} names no setting")
    return node[name]


def check_space(base: Params, tune_params: TuneParams) -> None:
    """Every dimension names a real setting, and each end of each range is a valid value for it."""
    if not tune_params.space:
        raise ConfigError("params.yaml tune.space is empty: list the train.* settings to search")
    for key, dim in tune_params.space.items():
        _dotted(base, key)
        for value in dim.choices or [dim.low, dim.high]:
            if dim.int_ and dim.choices is None:
                value = int(value)
            with_overrides(base, {key: value}, f"params.yaml tune.space.{key}")


def current_point(base: Params, tune_params: TuneParams) -> dict[str, Any]:
    """params.yaml's own values for the space, where they lie inside it (Optuna's encoding)."""
    point: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for key, dim in tune_params.space.items():
        if not active(dim, chosen):
            continue
        value = _dotted(base, key)
        inside = (
            value in dim.choices
            if dim.choices is not None
            else (isinstance(value, (int, float)) and dim.low <= value <= dim.high)
        )
        if inside:
            point[key] = _encode(dim, value)
            chosen[key] = value
    return point


# ----------------------------------------------------------------------------------- study settings
def storage_url(paths: ProjectPaths, tune_params: TuneParams) -> str:
    url = Settings.from_env().tune_storage or tune_params.storage
    if url:
        return url
    paths.tune_storage.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{paths.tune_storage}"


def open_storage(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """SQLite waits up to a minute for another worker's write instead of failing on a locked file. On a
    new database server, workers started together all try to create Optuna's tables and all but one
    fail (the schema is one transaction, so the loser leaves nothing behind): a worker that loses that
    race opens the storage again, finding the tables the winner made."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    if url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    for attempt in range(1, attempts):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except (IntegrityError, ProgrammingError) as exc:
            if "already exists" not in str(exc) and "duplicate key" not in str(exc):
                raise
            log.info("another worker is creating the study database's tables; opening it again")
            time.sleep(0.2 * attempt)
    return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)


def require_prepared(paths: ProjectPaths) -> None:
    missing = [str(paths.split(s).relative_to(paths.root)) for s in ("train", "val") if not paths.split(s).is_file()]
    if missing:
        raise TuningError(
            f"{', '.join(missing)} not found: the search reads the prepared splits; run `dvc repro prepare` first"
        )


def study_name(paths: ProjectPaths, params: Params) -> str:
    """tune.study, or the data source plus a fingerprint of what makes trials comparable: the training
    and validation data, the seed, the training settings, the space and how trials are scored."""
    if params.tune.study:
        return params.tune.study
    require_prepared(paths)
    digest = hashlib.sha256()
    for split in ("train", "val"):
        digest.update(paths.split(split).read_bytes())
    tune_params = params.tune.model_dump(mode="json", by_alias=True)
    scored = {
        k: tune_params[k]
        for k in (
            "sampler",
            "pruner",
            "epochs",
            "space",
            "cross_validate",
            "coreset",
            "startup_trials",
            "warmup_epochs",
        )
    }
    digest.update(
        json.dumps(
            {
                "seed": params.seed,
                "train": params.train.model_dump(mode="json"),
                "tune": scored,
                "cv": params.cv.model_dump(mode="json") if params.tune.cross_validate else None,
            },
            sort_keys=True,
        ).encode()
    )
    return f"{params.data.source}-{digest.hexdigest()[:10]}"


def make_sampler(tune_params: TuneParams, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if tune_params.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if tune_params.sampler == "grid":
            return optuna.samplers.GridSampler(grid_space(tune_params.space), seed=seed)
        # multivariate + group: TPE models parameters jointly and handles conditional ones; constant_liar
        # keeps parallel workers from proposing the same point while their trials run.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tune_params.startup_trials, multivariate=True, group=True, constant_liar=True
        )


def make_pruner(tune_params: TuneParams) -> optuna.pruners.BasePruner:
    if tune_params.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=tune_params.startup_trials, n_warmup_steps=tune_params.warmup_epochs
        )
    if tune_params.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, tune_params.warmup_epochs))
    return optuna.pruners.NopPruner()


def open_study(
    paths: ProjectPaths, params: Params, *, name: str | None = None, storage: str | None = None, seed_offset: int = 0
) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(
            study_name=name or study_name(paths, params),
            storage=open_storage(storage or storage_url(paths, params.tune)),
            sampler=make_sampler(params.tune, params.seed + seed_offset),
            pruner=make_pruner(params.tune),
            direction="minimize",
            load_if_exists=True,
        )


# ------------------------------------------------------------------------------------------ a trial
def trial_params(base: Params, tune_params: TuneParams, chosen: dict[str, Any], number: int) -> Params:
    overrides = dict(chosen)
    if tune_params.epochs is not None:
        overrides["train.epochs"] = tune_params.epochs
    return with_overrides(base, overrides, f"trial {number}")


class Objective:
    """Trains one trial's settings; returns its best validation loss (mean over folds with CV)."""

    def __init__(self, paths: ProjectPaths, base: Params, data: PreparedSplits, study: str) -> None:
        self.paths, self.base, self.data, self.study = paths, base, data, study
        self.tune_params = base.tune
        self.rows = {name: len(frame) for name, frame in data.frames.items()}

    def __call__(self, trial: optuna.Trial) -> float:
        chosen = suggest(trial, self.tune_params.space)
        trial.set_user_attr("overrides", chosen)
        trial.set_user_attr("rows", self.rows)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = trial_params(self.base, self.tune_params, chosen, trial.number)
        history: list[dict[str, float]] = []
        metrics: dict[str, float] = {}
        state, value = "failed", None
        started = time.perf_counter()

        def on_epoch(record: dict[str, float]) -> None:
            history.append(record)
            trial.report(record["val_loss"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {record['epoch']}: val loss {record['val_loss']:.5g}")

        def on_fold(fold: int, mean_loss: float) -> None:
            trial.report(mean_loss, fold)
            if trial.should_prune():
                raise optuna.TrialPruned(f"fold {fold}: mean val loss {mean_loss:.5g}")

        try:
            if self.tune_params.cross_validate:
                report = cross_validate(self.data, params, on_fold=on_fold)
                value = report.mean["best_val_loss"]
                metrics = {k: v for k, v in report.mean.items() if k != "best_val_loss"}
                trial.set_user_attr("cv_std", report.std)
            else:
                fitted = fit(self.data, params, run_checks=False, find_lr=False, on_epoch=on_epoch, refit=())
                value = fitted.result.best_val_loss
                val = self.data.frames["val"]
                metrics = task_metrics(
                    self.data.schema.task.value,
                    encode_target(val, self.data.schema),
                    predict(fitted.model, val, self.data.schema),
                )
            trial.set_user_attr("val_metrics", metrics)
            state = "complete"
            log.info(
                "trial %d: val loss %.5f after %d epoch(s) in %.1f s; %s",
                trial.number,
                value,
                len(history),
                time.perf_counter() - started,
                _describe(chosen),
            )
            return value
        except optuna.TrialPruned as exc:
            state = "pruned"
            log.info("trial %d pruned at %s; %s", trial.number, exc, _describe(chosen))
            raise
        except TrainingDiverged as exc:
            log.info("trial %d diverged (%s); %s", trial.number, str(exc).split(";")[0], _describe(chosen))
            raise
        finally:
            record_trial(
                self.paths.tune_reports_dir / self.study / "trials" / f"{trial.number:04d}",
                trial.number,
                state,
                chosen,
                history,
                metrics,
                value,
            )


def _describe(chosen: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('train.')}={_short(v)}" for k, v in chosen.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def record_trial(
    directory: Path,
    number: int,
    state: str,
    chosen: dict[str, Any],
    history: list[dict[str, float]],
    metrics: dict[str, float],
    value: float | None,
) -> None:
    """The trial as a DVCLive folder: params, per-epoch losses, its score and validation metrics."""
    from dvclive import Live

    live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
    live.log_params({"trial": number, "state": state, **{k: v for k, v in chosen.items()}})
    for record in history:
        live.log_metric("train/loss", record["train_loss"])
        live.log_metric("val/loss", record["val_loss"])
        live.next_step()
    if value is not None:
        live.log_metric("score", value, plot=False)
    for name, metric in metrics.items():
        live.log_metric(f"val/{name}", metric, plot=False)
    live.end()


# ------------------------------------------------------------------------------------------- search
def run_trials(
    paths: ProjectPaths,
    *,
    n_trials: int | None,
    timeout_minutes: float | None,
    name: str | None = None,
    storage: str | None = None,
    seed_offset: int = 0,
) -> str:
    """One worker: run trials of the study until its share of the budget or the time is spent (without
    either, params.yaml's budget)."""
    base = load_params(paths.params)
    if n_trials is None and timeout_minutes is None:
        n_trials, timeout_minutes = base.tune.n_trials, base.tune.timeout_minutes
    check_space(base, base.tune)
    require_prepared(paths)
    data = coreset_splits(load_prepared(paths), base, base.tune.coreset)  # the same coreset in every worker
    name = name or study_name(paths, base)
    study = open_study(paths, base, name=name, storage=storage, seed_offset=seed_offset)
    quiet_training_logs()
    study.optimize(
        Objective(paths, base, data, name),
        n_trials=n_trials,
        timeout=timeout_minutes * 60 if timeout_minutes else None,
        catch=(TrainingDiverged,),
        gc_after_trial=True,
    )
    return name


def quiet_training_logs() -> None:
    """A trial's epochs go to its DVCLive record; the log keeps one line per trial."""
    logging.getLogger("models.trainer").setLevel(logging.WARNING)
    logging.getLogger("models.lr_finder").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class TuneSummary:
    study: str
    storage: str
    sampler: str
    pruner: str
    trials: dict[str, int]
    best_trial: int
    best_value: float
    best_overrides: dict[str, Any]
    best_val_metrics: dict[str, float]
    ensemble_trials: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune(
    paths: ProjectPaths | None = None,
    *,
    n_trials: int | None = None,
    timeout_minutes: float | None = None,
    workers: int = 1,
    name: str | None = None,
    storage: str | None = None,
) -> TuneSummary:
    """A search of this run's budget (params.yaml unless given), over `workers` local processes, then
    the report and tuned.yaml."""
    paths = paths or ProjectPaths.here()
    base = load_params(paths.params)
    tune_params = base.tune
    check_space(base, tune_params)
    n_trials = n_trials if n_trials is not None else tune_params.n_trials
    timeout_minutes = timeout_minutes if timeout_minutes is not None else tune_params.timeout_minutes
    if n_trials is None and timeout_minutes is None:
        raise ConfigError("params.yaml tune: set n_trials or timeout_minutes (or both); the search needs a budget")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    require_prepared(paths)
    name = name or study_name(paths, base)
    storage = storage or storage_url(paths, tune_params)
    started = time.perf_counter()
    quiet_training_logs()
    study = open_study(paths, base, name=name, storage=storage)
    log.info(
        "study %s in %s: %d trial(s) so far; running %s trial(s)%s on %d worker(s)",
        name,
        _safe_url(storage),
        len(study.trials),
        n_trials if n_trials is not None else "unlimited",
        f" for at most {timeout_minutes:g} min" if timeout_minutes else "",
        workers,
    )
    point = current_point(base, tune_params) if tune_params.start_from_current and not study.trials else {}
    if point:
        study.enqueue_trial(point, user_attrs={"from": "params.yaml"})
        if workers > 1:
            # Workers racing for a queued trial on SQLite can both take it (no row locks there): the
            # starting point runs here first, and the workers share what is left of the budget.
            run_trials(paths, n_trials=1, timeout_minutes=None, name=name, storage=storage)
            n_trials = n_trials - 1 if n_trials is not None else None
            if timeout_minutes is not None:
                timeout_minutes = max(timeout_minutes - (time.perf_counter() - started) / 60, 1e-3)
    if n_trials != 0:
        if workers == 1:
            run_trials(paths, n_trials=n_trials, timeout_minutes=timeout_minutes, name=name, storage=storage)
        else:
            run_workers(paths, workers, n_trials, timeout_minutes, name, storage)
    summary = report(paths, name=name, storage=storage, started=started)
    return summary


def shares(n_trials: int | None, workers: int) -> list[int | None]:
    """The budget split over workers, so that together they run exactly n_trials."""
    if n_trials is None:
        return [None] * workers
    return [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]


def run_workers(
    paths: ProjectPaths, workers: int, n_trials: int | None, timeout_minutes: float | None, name: str, storage: str
) -> None:
    """Local worker processes on one study: each runs its share of the trials against the storage."""
    procs = []
    for i, share in enumerate(shares(n_trials, workers)):
        if share == 0:
            continue
        cmd = [
            sys.executable,
            "-m",
            "tuning.search",
            "--worker",
            "--study",
            name,
            "--storage",
            storage,
            "--seed-offset",
            str(i),
        ]
        if share is not None:
            cmd += ["--trials", str(share)]
        if timeout_minutes is not None:
            cmd += ["--timeout-minutes", str(timeout_minutes)]
        procs.append((i, subprocess.Popen(cmd, cwd=paths.root, env={**os.environ, variable("root"): str(paths.root)})))
    failed = [i for i, proc in procs if proc.wait() != 0]
    if failed:
        raise TuningError(
            f"tuning worker(s) {failed} failed (see their log above); the trials they finished are kept in study {name}"
        )


def worker_seed_offset() -> int:
    """A seed offset of its own for a worker started by hand on some machine: two workers with one seed
    would propose the same random start-up points."""
    identity = f"{socket.gethostname()}:{os.getpid()}".encode()
    return 1 + int.from_bytes(hashlib.sha256(identity).digest()[:4], "big") % 1_000_000


def _safe_url(url: str) -> str:
    """The storage URL without a password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: show it as given
        return url


# ------------------------------------------------------------------------------------------- report
def report(
    paths: ProjectPaths, *, name: str | None = None, storage: str | None = None, started: float | None = None
) -> TuneSummary:
    """Summary, trials table and plots under reports/tune/<study>/, and the best settings to tuned.yaml."""
    base = load_params(paths.params)
    tune_params = base.tune
    name = name or study_name(paths, base)
    storage = storage or storage_url(paths, tune_params)
    study = optuna.load_study(study_name=name, storage=open_storage(storage))
    states = {s.name.lower(): sum(1 for t in study.trials if t.state == s) for s in optuna.trial.TrialState}
    complete = sorted(
        (
            t
            for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        ),
        key=lambda t: (t.value, t.number),
    )
    if not complete:
        raise TuningError(f"study {name}: no trial completed ({states}); tuned.yaml was left as it was")
    best = complete[0]
    members = complete[: tune_params.ensemble.top_k] if tune_params.ensemble.top_k > 1 else []
    if tune_params.ensemble.top_k > 1 and len(members) < tune_params.ensemble.top_k:
        raise TuningError(
            f"study {name}: tune.ensemble.top_k is {tune_params.ensemble.top_k} but only {len(members)} "
            "trial(s) completed; tuned.yaml was left as it was"
        )
    summary = TuneSummary(
        study=name,
        storage=_safe_url(storage),
        sampler=tune_params.sampler,
        pruner=tune_params.pruner,
        trials={k: v for k, v in states.items() if v},
        best_trial=best.number,
        best_value=float(best.value),
        best_overrides=best.user_attrs.get("overrides", {}),
        best_val_metrics=best.user_attrs.get("val_metrics", {}),
        ensemble_trials=[t.number for t in members],
        seconds=round(time.perf_counter() - started, 1) if started is not None else 0.0,
    )
    out = paths.tune_reports_dir / name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary.to_dict())
    study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration")).to_csv(
        out / "trials.csv", index=False
    )
    plot_study(study, out)
    write_tuned(paths.tuned_params, summary, [t.user_attrs.get("overrides", {}) for t in members])
    log.info(
        "best: trial %d, val loss %.5f (%s); %s written%s",
        best.number,
        best.value,
        _describe(summary.best_overrides),
        paths.tuned_params.name,
        f" with an ensemble of trials {summary.ensemble_trials}" if members else "",
    )
    return summary


def write_tuned(path: Path, summary: TuneSummary, ensemble: list[dict[str, Any]]) -> None:
    content: dict[str, Any] = {
        "study": {
            "name": summary.study,
            "storage": summary.storage,
            "trial": summary.best_trial,
            "val_loss": summary.best_value,
        },
        "overrides": summary.best_overrides,
    }
    if ensemble:
        content["study"]["ensemble_trials"] = summary.ensemble_trials
        content["ensemble"] = ensemble
    header = (
        "# Written by `python -m tuning.search`: the search's best settings as overrides of params.yaml,\n"
        "# applied by the train stage and recorded with the model. Replace with {} to train on params.yaml alone.\n"
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(content, sort_keys=False, default_flow_style=None))
    os.replace(tmp, path)


def plot_study(study: optuna.Study, out: Path) -> None:
    """Optimisation history and parameter importance as PNG files (they render anywhere, offline)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = ovm.plot_optimization_history(study)
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        ax.figure.savefig(out / "history.png", dpi=100)
        plt.close(ax.figure)
        try:
            ax = ovm.plot_param_importances(study)
        except (ValueError, RuntimeError) as exc:  # fewer than two completed trials, or nothing varied
            log.info("no parameter-importance plot: %s", exc)
            (out / "importance.png").unlink(missing_ok=True)
            return
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        ax.figure.savefig(out / "importance.png", dpi=100)
        plt.close(ax.figure)


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    from loopline.stage import run_stage

    parser = argparse.ArgumentParser(description="Hyperparameter search over params.yaml tune.space (Optuna).")
    parser.add_argument("--trials", type=int, help="trials in this run (default: tune.n_trials)")
    parser.add_argument(
        "--timeout-minutes", type=float, help="start no trial after this long (default: tune.timeout_minutes)"
    )
    parser.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study")
    parser.add_argument("--study", help="study name (default: tune.study, else derived from data and settings)")
    parser.add_argument("--storage", help="Optuna storage URL (default: tune.storage, else .state/tune/study.db)")
    parser.add_argument("--worker", action="store_true", help="only run trials (one worker of a shared study)")
    parser.add_argument("--report", action="store_true", help="only write the report and tuned.yaml")
    parser.add_argument(
        "--seed-offset",
        type=int,
        help="this worker's sampler seed is params seed + offset; workers of one study need different ones "
        "(default with --worker: derived from the host name and process id)",
    )
    args = parser.parse_args(argv)
    paths = ProjectPaths.here()
    budget = {
        "n_trials": args.trials,
        "timeout_minutes": args.timeout_minutes,
        "name": args.study,
        "storage": args.storage,
    }
    if args.worker:
        offset = worker_seed_offset() if args.seed_offset is None else args.seed_offset
        return run_stage("tune worker", lambda: run_trials(paths, **budget, seed_offset=offset))
    if args.report:
        return run_stage("tune", lambda: report(paths, name=args.study, storage=args.storage))
    return run_stage("tune", lambda: tune(paths, **budget, workers=args.workers))


if __name__ == "__main__":
    raise SystemExit(main())
