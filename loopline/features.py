"""The model's input layout, derived from the feature schema.

A model takes two arrays: `numeric` (float32, one column per numeric feature in schema order, NaN where
the value is missing) and `categorical` (int64, one column per categorical feature, holding the value's
position in the schema's category list, or -1 when it is missing or not a listed category). Everything
else (normalisation, vocabularies, embeddings) happens inside the model, so training, the exported ONNX
graph and the HTTP service all feed it the same raw values through this one function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopline.schema import FeatureSchema

UNKNOWN = -1


@dataclass(frozen=True)
class EncodedFeatures:
    numeric: np.ndarray  # float32 [rows, numeric features]
    categorical: np.ndarray  # int64 [rows, categorical features]
    missing: np.ndarray | None = None
    """bool [rows, numeric then categorical features]: the value was absent and the learned fill stands
    in for it (the request log keeps it: monitoring watches each column's share of missing values)."""

    def __len__(self) -> int:
        return len(self.numeric)


def encode_features(frame: pd.DataFrame, schema: FeatureSchema) -> EncodedFeatures:
    rows = len(frame)
    numeric_fills = numeric_fill_values(schema)
    numeric = np.empty((rows, len(schema.numeric_features)), dtype=np.float32)
    for j, col in enumerate(schema.numeric_features):
        numeric[:, j] = pd.to_numeric(frame[col.name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    _fill_numeric(numeric, numeric_fills)
    categorical = np.empty((rows, len(schema.categorical_features)), dtype=np.int64)
    for j, (col, index) in enumerate(zip(schema.categorical_features, category_indexes(schema))):
        categorical[:, j] = [index.get(_category_key(v), UNKNOWN) for v in frame[col.name].tolist()]
    return EncodedFeatures(numeric=numeric, categorical=categorical)


# A null becomes what training turned it into: prepare's learned fills, frozen in the model's schema
# (schema.learned_fills). Both encoders apply them, so a served null meets the model exactly as the
# training rows' nulls did; without a fill, a null stays NaN / UNKNOWN, the model's own missing slot.
def numeric_fill_values(schema: FeatureSchema) -> np.ndarray:
    """Per numeric feature, the value its nulls become (NaN: kept as missing)."""
    fills = schema.learned_fills
    return np.array(
        [float(fills[c.name]) if c.name in fills else np.nan for c in schema.numeric_features], dtype=np.float32
    )


def category_indexes(schema: FeatureSchema) -> list[dict[object, int]]:
    """Per categorical feature, value -> position in its category list; None maps to the learned fill's
    position where there is one (a value outside the list stays unknown either way)."""
    indexes = []
    for col in schema.categorical_features:
        index: dict[object, int] = {value: i for i, value in enumerate(col.categories)}
        if col.name in schema.learned_fills:
            index[None] = index[_category_key(schema.learned_fills[col.name])]
        indexes.append(index)
    return indexes


def _fill_numeric(numeric: np.ndarray, fills: np.ndarray) -> None:
    filled = ~np.isnan(fills)
    if filled.any():  # most schemas fill nothing: no work on the request path then
        np.copyto(numeric, fills, where=np.isnan(numeric) & filled)


class RecordEncoder:
    """`encode_features` for records already in memory as mappings (parsed JSON): the same arrays, without
    building a DataFrame, for the HTTP service's request path. An absent key counts as missing."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.numeric_names = [c.name for c in schema.numeric_features]
        self.numeric_fills = numeric_fill_values(schema)
        # A dict lookup already treats 3.0 like 3, as _category_key does; None finds the learned fill.
        self.categorical = [(c.name, index) for c, index in zip(schema.categorical_features, category_indexes(schema))]

    def __call__(self, records: Sequence[Mapping[str, object]]) -> EncodedFeatures:
        rows = len(records)
        numeric = np.empty((rows, len(self.numeric_names)), dtype=np.float32)
        for j, name in enumerate(self.numeric_names):
            numeric[:, j] = np.array([r.get(name) for r in records], dtype=np.float64)  # None -> NaN
        missing = np.empty((rows, len(self.numeric_names) + len(self.categorical)), dtype=bool)
        missing[:, : len(self.numeric_names)] = np.isnan(numeric)
        _fill_numeric(numeric, self.numeric_fills)
        categorical = np.empty((rows, len(self.categorical)), dtype=np.int64)
        for j, (name, index) in enumerate(self.categorical):
            values = [r.get(name) for r in records]
            missing[:, len(self.numeric_names) + j] = [v is None for v in values]
            categorical[:, j] = [index.get(v, UNKNOWN) for v in values]
        return EncodedFeatures(numeric=numeric, categorical=categorical, missing=missing)


def class_probabilities(out: np.ndarray) -> np.ndarray:
    """A classifier's outputs as [rows, classes] probabilities in float64, in the schema's class order:
    a binary model outputs P(class 1) alone, a multiclass one every class's probability."""
    out = np.asarray(out, dtype=np.float64)
    return np.column_stack([1 - out, out]) if out.ndim == 1 else out


def prediction_columns(out: np.ndarray, schema: FeatureSchema) -> dict[str, np.ndarray]:
    """A model's outputs as columns: `prediction`, and for classification `proba_<class>` per class."""
    out = np.asarray(out, dtype=np.float64)
    if not schema.task.is_classification:
        return {"prediction": out.reshape(len(out))}
    proba = class_probabilities(out)
    classes = np.empty(len(schema.classes), dtype=object)
    classes[:] = list(schema.classes)
    columns = {"prediction": classes[proba.argmax(axis=1)]}
    columns.update({f"proba_{c}": proba[:, i] for i, c in enumerate(schema.classes)})
    return columns


def encode_target(frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """Regression: float32 values. Classification: int64 class index in the schema's class order."""
    y = frame[schema.target]
    if schema.task.is_classification:
        index = {value: i for i, value in enumerate(schema.classes)}
        return np.asarray([index[_category_key(v)] for v in y.tolist()], dtype=np.int64)
    return y.to_numpy(dtype=np.float32)


def decode_predictions(out: np.ndarray, schema: FeatureSchema) -> dict[str, list]:
    """A model's outputs as the HTTP response gives them: values for regression; for classification
    the predicted class and each class's probability, in the schema's class order."""
    out = np.asarray(out, dtype=np.float64)
    if not schema.task.is_classification:
        return {"predictions": out.tolist()}
    proba = class_probabilities(out)
    classes = list(schema.classes)
    return {
        "predictions": [classes[i] for i in proba.argmax(axis=1)],
        "probabilities": [dict(zip(map(str, classes), row)) for row in proba.round(6).tolist()],
    }


def _category_key(value: object) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
