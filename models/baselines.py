"""`baselines` stage: the dumb models first. A mean or majority predictor, a linear model, and gradient-
boosted trees (scikit-learn's HistGradientBoosting), fitted on train and scored on validation and test
with the same metrics as the network, so its figures always stand next to what it must beat.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from loopline.atomic import StagedOutputs, write_json
from loopline.config import load_params
from loopline.features import encode_features, encode_target
from loopline.metrics import task_metrics
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, Task, load_schema
from loopline.stage import run_stage

log = logging.getLogger(__name__)


@dataclass
class FittedBaseline:
    """A fitted baseline that predicts from raw rows, like the network: values, P(class 1) or probabilities."""

    name: str
    task: str
    model: Any
    unknown_code: float
    """Categorical codes of -1 (missing or unseen) become a category of their own for the trees."""

    def design(self, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
        enc = encode_features(frame, schema)
        categorical = np.where(enc.categorical < 0, self.unknown_code, enc.categorical).astype(np.float64)
        return np.hstack([enc.numeric.astype(np.float64), categorical])

    def predict(self, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
        x = self.design(frame, schema)
        if self.task == Task.REGRESSION:
            return self.model.predict(x)
        proba = self.model.predict_proba(x)
        return proba[:, 1] if self.task == Task.BINARY else proba


def baseline_models(schema: FeatureSchema, seed: int) -> dict[str, Any]:
    n_num = len(schema.numeric_features)
    n_cat = len(schema.categorical_features)
    num_idx, cat_idx = list(range(n_num)), list(range(n_num, n_num + n_cat))
    linear_features = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="mean", add_indicator=True), StandardScaler()), num_idx),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), cat_idx),
        ]
    )
    is_cat = [False] * n_num + [True] * n_cat
    if schema.task is Task.REGRESSION:
        return {
            "mean": DummyRegressor(strategy="mean"),
            "linear": make_pipeline(linear_features, Ridge(alpha=1.0)),
            "hist_gradient_boosting": HistGradientBoostingRegressor(categorical_features=is_cat, random_state=seed),
        }
    return {
        "majority": DummyClassifier(strategy="prior"),
        "linear": make_pipeline(linear_features, LogisticRegression(max_iter=2000)),
        "hist_gradient_boosting": HistGradientBoostingClassifier(categorical_features=is_cat, random_state=seed),
    }


def fit_baselines(train: pd.DataFrame, schema: FeatureSchema, seed: int) -> dict[str, FittedBaseline]:
    unknown = float(max((len(c.categories) for c in schema.categorical_features), default=0))
    fitted = {}
    for name, model in baseline_models(schema, seed).items():
        baseline = FittedBaseline(name, schema.task.value, model, unknown)
        model.fit(baseline.design(train, schema), encode_target(train, schema))
        fitted[name] = baseline
    return fitted


def score_baselines(
    fitted: dict[str, FittedBaseline], splits: dict[str, pd.DataFrame], schema: FeatureSchema
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, baseline in fitted.items():
        out[name] = {
            split: task_metrics(
                schema.task.value, encode_target(splits[split], schema), baseline.predict(splits[split], schema)
            )
            for split in ("val", "test")
        }
        log.info("%s: %s", name, out[name]["test"])
    return out


def load_baselines(path: Path) -> dict[str, FittedBaseline]:
    """The fitted baselines written by this stage (a pickle of Loopline's own artifact)."""
    return joblib.load(path)


def run_baselines(paths: ProjectPaths | None = None) -> dict:
    paths = paths or ProjectPaths.here()
    params = load_params(paths.params)
    schema = load_schema(paths.prepared_schema)
    splits = {name: pd.read_parquet(paths.split(name)) for name in ("train", "val", "test")}
    fitted = fit_baselines(splits["train"], schema, params.seed)
    scores = score_baselines(fitted, splits, schema)
    with StagedOutputs() as out:
        joblib.dump(fitted, out.path(paths.baseline_models))
        write_json(out.path(paths.baseline_metrics), scores)
    return scores


def main() -> int:
    return run_stage("baselines", run_baselines)


if __name__ == "__main__":
    from models import baselines  # run under the module's own name, so the pickle names models.baselines

    raise SystemExit(baselines.main())
