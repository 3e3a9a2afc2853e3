"""`baselines` stage: the dumb models first. A mean or majority predictor, a linear model, and gradient-
boosted trees (scikit-learn's HistGradientBoosting), fitted on train and scored on validation and test
with the same metrics as the network, so its figures always stand next to what it must beat.
"""

from __future__ import annotations

import json
import logging
from typing import Any

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
from loopline.cli import run_stage
from loopline.config import load_params
from loopline.features import encode_features, encode_target
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, schema_from_dict
from models.metrics import task_metrics

log = logging.getLogger(__name__)


def _design(frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    enc = encode_features(frame, schema)
    return np.hstack([enc.numeric.astype(np.float64), enc.categorical.astype(np.float64)])


def baseline_models(schema: FeatureSchema, seed: int) -> dict[str, Any]:
    n_num = len(schema.numeric_features)
    n_cat = len(schema.categorical_features)
    num_idx, cat_idx = list(range(n_num)), list(range(n_num, n_num + n_cat))
    linear_features = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="mean", add_indicator=True), StandardScaler()), num_idx),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), cat_idx),
    ])
    is_cat = [False] * n_num + [True] * n_cat
    if schema.task.value == "regression":
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


def score_baselines(splits: dict[str, pd.DataFrame], schema: FeatureSchema, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    # Categorical codes of -1 (missing/unseen) become a category of their own for the trees.
    x = {name: _design(frame, schema) for name, frame in splits.items()}
    n_num = len(schema.numeric_features)
    for arr in x.values():
        arr[:, n_num:] = np.where(arr[:, n_num:] < 0, np.nanmax(x["train"][:, n_num:], initial=0) + 1, arr[:, n_num:])
    y = {name: encode_target(frame, schema) for name, frame in splits.items()}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model_name, model in baseline_models(schema, seed).items():
        model.fit(x["train"], y["train"])
        out[model_name] = {}
        for split in ("val", "test"):
            if schema.task.value == "regression":
                pred = model.predict(x[split])
            else:
                proba = model.predict_proba(x[split])
                pred = proba[:, 1] if schema.task.value == "binary" else proba
            out[model_name][split] = task_metrics(schema.task.value, y[split], pred)
        log.info("%s: %s", model_name, out[model_name]["test"])
    return out


def run_baselines(paths: ProjectPaths | None = None) -> dict:
    paths = paths or ProjectPaths.here()
    params = load_params(paths.params)
    schema = schema_from_dict(json.loads(paths.prepared_schema.read_text()), source=str(paths.prepared_schema))
    splits = {name: pd.read_parquet(paths.split(name)) for name in ("train", "val", "test")}
    scores = score_baselines(splits, schema, params.seed)
    with StagedOutputs() as out:
        write_json(out.path(paths.baseline_metrics), scores)
    return scores


def main() -> int:
    return run_stage("baselines", run_baselines)


if __name__ == "__main__":
    raise SystemExit(main())
