"""Hyperparameter search, cross-validation and ensembles, on the bike data of the first half of 2011."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml

from conftest import FAST_TRAIN, Project, new_project
from loopline.config import Params, load_params
from loopline.errors import ConfigError
from loopline.paths import ProjectPaths
from loopline.schema import schema_from_dict
from toy import SCHEMAS
from tuning.crossval import kfold_folds, make_folds, rolling_origin_folds

# A small, quick search: three epochs per trial, a space with a conditional parameter.
QUICK_TUNE = {
    "n_trials": 4,
    "epochs": 3,
    "startup_trials": 2,
    "warmup_epochs": 1,
    "space": {
        "train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "train.optimizer": {"choices": ["adamw", "sgd"]},
        "train.momentum": {"low": 0.8, "high": 0.99, "when": {"train.optimizer": "sgd"}},
        "train.model.hidden": {"choices": [[32], [64, 32]]},
    },
}


# What the tests that change tune: settings put back (set_params merges one level deep).
QUICK_TUNE_AGAIN = {
    **QUICK_TUNE,
    "sampler": "tpe",
    "pruner": "median",
    "start_from_current": True,
    "cross_validate": False,
}


def tune(project: Project, *args: str) -> str:
    return project.run(sys.executable, "-m", "tuning.search", *args).output


def load(project: Project, study: str, db: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{project.path(db)}")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Project:
    project = new_project(tmp_path_factory.mktemp("tuning"))
    project.set_params(data={"as_of": "2011-06-30"}, train=FAST_TRAIN, tune=QUICK_TUNE)
    project.commit("tune on the first half of 2011")
    project.dvc("repro", "prepare")
    return project


def test_a_seeded_search_is_repeatable(prepared: Project) -> None:
    for db in ("first.db", "second.db"):
        tune(prepared, "--study", "seeded", "--storage", f"sqlite:///{prepared.path(db)}")
    first, second = load(prepared, "seeded", "first.db"), load(prepared, "seeded", "second.db")
    assert len(first.trials) == 4
    assert [t.params for t in first.trials] == [t.params for t in second.trials]
    assert [t.value for t in first.trials] == [t.value for t in second.trials]
    # trial 0 tries params.yaml's own settings; the conditional momentum exists only for sgd trials
    assert first.trials[0].params["train.optimizer"] == "adamw"
    for trial in first.trials:
        assert ("train.momentum" in trial.params) == (trial.params["train.optimizer"] == "sgd")
    # every trial is recorded for comparison: a DVCLive folder with params and metrics
    for trial in first.trials:
        folder = prepared.path(f"reports/tune/seeded/trials/{trial.number:04d}")
        recorded = yaml.safe_load((folder / "params.yaml").read_text())
        assert (recorded["trial"], recorded["state"]) == (trial.number, trial.state.name.lower())
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["val"]["loss"] == trial.intermediate_values[max(trial.intermediate_values)]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert metrics["score"] == pytest.approx(trial.value)
    for name in ("summary.json", "trials.csv", "history.png", "importance.png"):
        assert prepared.path(f"reports/tune/seeded/{name}").stat().st_size > 0


@pytest.mark.parametrize("pruner", ["median", "successive_halving"])
def test_pruning_stops_a_trial_that_is_clearly_worse(prepared: Project, pruner: str) -> None:
    from tuning.search import open_study

    db = f"sqlite:///{prepared.path(f'pruning-{pruner}.db')}"
    prepared.set_params(tune={**QUICK_TUNE_AGAIN, "pruner": pruner})
    try:
        params = load_params(prepared.path("params.yaml"))
        study = open_study(ProjectPaths(prepared.root), params, name="pruning", storage=db)
        good = {"train.lr": 3.0e-3, "train.optimizer": "adamw", "train.model.hidden": json.dumps([64, 32])}
        study.enqueue_trial(good)
        study.enqueue_trial({**good, "train.lr": 5.0e-3})
        # plain SGD at the smallest rate barely moves from its initial loss
        study.enqueue_trial(
            {
                "train.lr": 1.0e-4,
                "train.optimizer": "sgd",
                "train.momentum": 0.8,
                "train.model.hidden": json.dumps([32]),
            }
        )
        tune(prepared, "--worker", "--study", "pruning", "--storage", db, "--trials", "3")
    finally:
        prepared.set_params(tune=QUICK_TUNE_AGAIN)
    trials = load(prepared, "pruning", f"pruning-{pruner}.db").trials
    assert trials[0].state == optuna.trial.TrialState.COMPLETE
    if pruner == "median":  # successive halving keeps only the best of each rung, so it may stop trial 1 too
        assert trials[1].state == optuna.trial.TrialState.COMPLETE
    worse = trials[2]
    assert worse.state == optuna.trial.TrialState.PRUNED
    assert max(worse.intermediate_values) < 2  # stopped before its third (last) epoch
    assert min(worse.intermediate_values.values()) > max(t.value for t in trials[:2])


def test_two_worker_processes_share_one_study_without_lost_or_duplicated_trials(prepared: Project) -> None:
    db = f"sqlite:///{prepared.path('shared.db')}"
    output = tune(prepared, "--study", "shared", "--storage", db, "--workers", "2", "--trials", "6")
    trials = load(prepared, "shared", "shared.db").trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    # trial 0 (params.yaml's own setting) runs first; the two workers share the other five
    assert trials[0].user_attrs["from"] == "params.yaml"
    by_worker = pd.Series([t.user_attrs["worker"] for t in trials[1:]]).value_counts()
    assert sorted(by_worker) == [2, 3] and trials[0].user_attrs["worker"] not in by_worker
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6
    assert "tuned.yaml written" in output
    tuned = yaml.safe_load(prepared.path("tuned.yaml").read_text())
    best = min((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    assert tuned["study"]["trial"] == best.number
    assert tuned["overrides"] == best.user_attrs["overrides"]


def test_workers_opening_a_new_postgresql_database_at_once_all_get_the_storage(postgres) -> None:
    """On a new database every worker tries to create Optuna's tables; those that lose the race open it again."""
    from tuning.search import open_storage

    postgres.create_database("optuna_race")
    barrier, errors = threading.Barrier(4), []

    def open_at_once() -> None:
        barrier.wait()
        try:
            open_storage(postgres.url("optuna_race", "psycopg"))
        except Exception as exc:  # the assertion below names it
            errors.append(repr(exc)[:300])

    threads = [threading.Thread(target=open_at_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_two_workers_started_apart_share_one_postgresql_study_without_lost_or_duplicated_trials(
    prepared: Project, postgres
) -> None:
    """As on two machines: two `--worker` processes, each with its own trial budget and no seed offset
    given, on one study in a real PostgreSQL; then the report, once."""
    postgres.create_database("optuna")
    url = postgres.url("optuna", "psycopg")
    command = [sys.executable, "-m", "tuning.search", "--worker", "--study", "on-postgres", "--storage", url]
    workers = [
        subprocess.Popen([*command, "--trials", "3"], cwd=prepared.root, env=prepared.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output
    tune(prepared, "--report", "--study", "on-postgres", "--storage", url)
    trials = optuna.load_study(study_name="on-postgres", storage=url).trials
    assert [t.number for t in trials] == list(range(6))
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    assert sorted(pd.Series([t.user_attrs["worker"] for t in trials]).value_counts()) == [3, 3]
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # no point proposed twice
    tuned = yaml.safe_load(prepared.path("tuned.yaml").read_text())
    assert tuned["study"]["name"] == "on-postgres" and "postgres" in tuned["study"]["storage"]


def test_a_time_budget_stops_the_search_before_its_trial_budget(prepared: Project) -> None:
    db = f"sqlite:///{prepared.path('timed.db')}"
    tune(prepared, "--study", "timed", "--storage", db, "--trials", "50", "--timeout-minutes", "0.001")
    assert len(load(prepared, "timed", "timed.db").trials) == 1  # the trial running at the deadline finishes


def test_a_search_space_naming_no_setting_is_refused_with_the_key(prepared: Project) -> None:
    from tuning.search import check_space

    params = Params.model_validate(
        {
            **load_params(prepared.path("params.yaml")).model_dump(by_alias=True),
            "tune": {"space": {"train.learning_rate": {"low": 0.1, "high": 1.0}}},
        }
    )
    with pytest.raises(ConfigError, match="'train.learning_rate' names no setting"):
        check_space(params, params.tune)
    params = Params.model_validate(
        {**params.model_dump(by_alias=True), "tune": {"space": {"train.model.dropout": {"low": 0.0, "high": 1.5}}}}
    )
    with pytest.raises(ConfigError, match=r"tune.space.train.model.dropout: train.model.dropout"):
        check_space(params, params.tune)


def test_the_grid_sampler_tries_every_point_once_then_stops(prepared: Project) -> None:
    grid = {
        "sampler": "grid",
        "start_from_current": False,
        "space": {
            "train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True, "grid": [1.0e-3, 1.0e-2]},
            "train.model.hidden": {"choices": [[32], [64, 32]]},
        },
    }
    prepared.set_params(tune={**QUICK_TUNE, **grid})
    try:
        tune(prepared, "--study", "grid", "--storage", f"sqlite:///{prepared.path('grid.db')}", "--trials", "6")
    finally:
        prepared.set_params(tune=QUICK_TUNE_AGAIN)
    trials = load(prepared, "grid", "grid.db").trials
    points = sorted((t.params["train.lr"], t.params["train.model.hidden"]) for t in trials)
    assert points == [(1.0e-3, "[32]"), (1.0e-3, "[64, 32]"), (1.0e-2, "[32]"), (1.0e-2, "[64, 32]")]


def test_cross_validated_trials_are_scored_by_the_mean_over_folds(prepared: Project) -> None:
    prepared.set_params(tune={**QUICK_TUNE, "cross_validate": True, "epochs": 2}, cv={"method": "rolling", "folds": 2})
    try:
        tune(prepared, "--study", "cv", "--storage", f"sqlite:///{prepared.path('cv.db')}", "--trials", "2")
    finally:
        prepared.set_params(tune=QUICK_TUNE_AGAIN)
    for trial in load(prepared, "cv", "cv.db").trials:
        assert sorted(trial.intermediate_values) == [0, 1]  # one report per fold: the running mean
        assert trial.value == trial.intermediate_values[1]
        assert trial.intermediate_values[0] != trial.value
        assert set(trial.user_attrs["cv_std"]) >= {"best_val_loss", "mae"}


def test_trials_learn_a_coreset_and_a_fast_retrain_learns_one_too(prepared: Project) -> None:
    full = {s: len(pd.read_parquet(prepared.path(f"data/prepared/{s}.parquet"))) for s in ("train", "val")}
    prepared.set_params(tune={**QUICK_TUNE, "coreset": {"size": 0.2}})
    try:
        tune(prepared, "--study", "coreset", "--storage", f"sqlite:///{prepared.path('coreset.db')}", "--trials", "2")
    finally:
        prepared.set_params(tune={**QUICK_TUNE_AGAIN, "coreset": None})
    for trial in load(prepared, "coreset", "coreset.db").trials:
        rows = trial.user_attrs["rows"]
        assert 0 < rows["train"] <= round(0.2 * full["train"]) and 0 < rows["val"] <= round(0.2 * full["val"])
        assert np.isfinite(trial.value)
    # train.coreset: the stage's networks learn the weighted sample; its metrics are on the whole splits
    before = yaml.safe_load(prepared.path("params.yaml").read_text())["train"]
    prepared.set_params(train={"epochs": 10, "coreset": {"size": 0.25}})
    try:
        prepared.run(sys.executable, "-m", "models.train")
    finally:
        prepared.set_params(train=before)
    training = json.loads(prepared.path("artifacts/model/training.json").read_text())
    assert training["coreset"]["size"] == 0.25
    assert training["rows_learned"]["train"] <= round(0.25 * full["train"])
    assert training["rows_learned"]["test"] == len(pd.read_parquet(prepared.path("data/prepared/test.parquet")))
    metrics = json.loads(prepared.path("reports/train/metrics.json").read_text())
    assert metrics["val"]["mae"] > 0 and metrics["test"]["mae"] > 0


def test_a_search_before_prepare_says_what_to_run(project: Project) -> None:
    result = project.run(sys.executable, "-m", "tuning.search", check=False)
    assert result.returncode == 1
    assert "data/prepared/train.parquet, data/prepared/val.parquet not found" in result.output
    assert "run `dvc repro prepare` first" in result.output


# ------------------------------------------------------------------------------------ cross-validation
def test_rolling_origin_folds_never_train_on_the_future() -> None:
    times = pd.Series(np.repeat(pd.date_range("2011-01-01", periods=200, freq="h"), 3)).sample(frac=1, random_state=0)
    folds = rolling_origin_folds(times, 4)
    assert len(folds) == 4
    values = times.to_numpy()
    for i, fold in enumerate(folds):
        assert values[fold.train].max() < values[fold.val].min()
        if i:  # expanding window: each fold trains on everything its predecessor saw, and its validation block
            assert set(folds[i - 1].train) | set(folds[i - 1].val) == set(fold.train)
    assert set(folds[-1].train) | set(folds[-1].val) == set(range(len(times)))


def test_kfold_keeps_groups_apart_and_is_refused_on_time_split_data() -> None:
    groups = np.repeat(np.arange(40), 5)
    for fold in kfold_folds(len(groups), 5, seed=0, groups=groups):
        assert not set(groups[fold.train]) & set(groups[fold.val])
    params = Params.model_validate({"cv": {"method": "kfold"}})  # prepare.split.method is time by default
    with pytest.raises(ConfigError, match="would train on rows later"):
        make_folds(pd.DataFrame({"t": range(10)}), params, schema_from_dict(SCHEMAS["regression"]))


def test_cross_validation_reports_every_fold_with_mean_and_spread(prepared: Project) -> None:
    prepared.set_params(cv={"method": "rolling", "folds": 3}, train={**FAST_TRAIN, "epochs": 3})
    try:
        prepared.run(sys.executable, "-m", "tuning.crossval")
    finally:
        prepared.set_params(train={**FAST_TRAIN, "epochs": 40})
    report = json.loads(prepared.path("reports/cv/metrics.json").read_text())
    assert report["method"] == "rolling" and len(report["folds"]) == 3
    for fold in report["folds"]:
        assert fold["train_time"][1] < fold["val_time"][0]
    maes = [f["mae"] for f in report["folds"]]
    assert report["mean"]["mae"] == pytest.approx(np.mean(maes))
    assert report["std"]["mae"] == pytest.approx(np.std(maes, ddof=1))


# ------------------------------------------------------------------- into the pipeline, and ensembles
def test_the_tuning_flow_carries_the_best_ensemble_through_train_export_and_the_gate(tmp_path: Path) -> None:
    project = new_project(tmp_path)
    project.set_params(
        data={"as_of": "2011-06-30"},
        train=FAST_TRAIN,
        evaluate={"min_slice_rows": 100},
        tune={**QUICK_TUNE, "ensemble": {"top_k": 2}},
    )
    project.commit("tune, then train an ensemble of the best two")
    project.run(sys.executable, "-m", "flows.tuning", "--trials", "4")

    tuned = yaml.safe_load(project.path("tuned.yaml").read_text())
    assert len(tuned["ensemble"]) == 2 and tuned["ensemble"][0] == tuned["overrides"]
    training = json.loads(project.path("artifacts/model/training.json").read_text())
    assert training["tuned"]["study"]["trial"] == tuned["study"]["trial"]
    spec = json.loads(project.path("artifacts/model/spec.json").read_text())
    assert [m["hidden"] for m in spec["ensemble"]] == [m["train.model.hidden"] for m in tuned["ensemble"]]
    assert [r["lr"] for r in training["ensemble"]] == pytest.approx([m["train.lr"] for m in tuned["ensemble"]])

    # the gate judged the candidate like any other (its verdict names every rule)
    verdict = json.loads(project.path("reports/gate/verdict.json").read_text())
    assert {"recipe_checks", "export_parity"} <= {r["name"] for r in verdict["rules"]}
    assert project.dvc("status").output.strip().endswith("Data and pipelines are up to date.")

    # one ONNX graph equal to the mean of the members run separately in PyTorch
    from loopline import runtime
    from models.export import load_exported
    from models.network import EnsembleNet
    from models.torch_predict import load_model, predict

    ensemble, schema = load_model(project.path("artifacts/model"))
    assert isinstance(ensemble, EnsembleNet) and len(ensemble.members) == 2
    rows = project.read_parquet("data/prepared/test.parquet")
    members = np.stack([predict(member, rows, schema) for member in ensemble.members])
    assert not np.allclose(members[0], members[1])
    onnx = runtime.predict_frame(load_exported(project.path("artifacts/onnx/model.onnx")), rows, schema)
    np.testing.assert_allclose(onnx, members.mean(axis=0), rtol=1e-5, atol=1e-3)
    with torch.no_grad():
        assert np.allclose(predict(ensemble, rows, schema), members.mean(axis=0), rtol=1e-6)
