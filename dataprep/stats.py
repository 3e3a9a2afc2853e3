"""Preprocessing statistics and missing-value fills, fitted on the training split only."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loopline.errors import DataError
from loopline.schema import FeatureSchema, MissingPolicy


def fit_missing_fills(train: pd.DataFrame, schema: FeatureSchema) -> dict[str, Any]:
    """The value each nullable column's nulls become, per its policy, learned from train."""
    fills: dict[str, Any] = {}
    for col in schema.columns:
        if not col.nullable or col.missing in (MissingPolicy.KEEP, MissingPolicy.DROP):
            continue
        values = train[col.name].dropna()
        if col.missing is MissingPolicy.FILL:
            fills[col.name] = col.fill_value
            continue
        if values.empty:
            raise DataError(
                f"column {col.name!r}: missing policy {col.missing.value!r} needs values, but the training "
                f"split has only nulls in it"
            )
        if col.missing is MissingPolicy.MEDIAN:
            fills[col.name] = float(values.median())
        elif col.missing is MissingPolicy.MEAN:
            fills[col.name] = float(values.mean())
        else:  # MODE: most frequent, ties broken by the smallest value for repeatability
            counts = values.value_counts()
            top = counts[counts == counts.max()].index
            fills[col.name] = _plain(sorted(top)[0])
    return fills


def apply_missing_policy(df: pd.DataFrame, schema: FeatureSchema, fills: dict[str, Any]) -> tuple[pd.DataFrame, int]:
    """Fill nulls as the fitted policy says; drop rows with nulls in 'drop' columns. Returns rows dropped."""
    df = df.copy()
    for name, value in fills.items():
        df[name] = df[name].fillna(value)
    drop_columns = [c.name for c in schema.columns if c.nullable and c.missing is MissingPolicy.DROP]
    if not drop_columns:
        return df, 0
    keep = df[drop_columns].notna().all(axis=1)
    return df[keep].reset_index(drop=True), int((~keep).sum())


def fit_preprocessing_stats(train: pd.DataFrame, schema: FeatureSchema, fills: dict[str, Any]) -> dict[str, Any]:
    """Normalisation statistics, category vocabularies and target statistics from the training split."""
    numeric = {}
    for col in schema.numeric_features:
        values = train[col.name].astype("float64")
        present = values.dropna()
        numeric[col.name] = {
            "mean": float(present.mean()) if len(present) else 0.0,
            "std": float(present.std(ddof=0)) if len(present) else 1.0,
            "median": float(present.median()) if len(present) else 0.0,
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None,
            "null_share": float(values.isna().mean()),
        }
    categorical = {}
    for col in schema.categorical_features:
        counts = train[col.name].value_counts()
        seen = [c for c in col.categories if c in counts.index]
        categorical[col.name] = {
            "vocabulary": seen,
            "counts": {str(c): int(counts[c]) for c in seen},
            "unseen_in_train": [c for c in col.categories if c not in counts.index],
            "null_share": float(train[col.name].isna().mean()),
        }
    return {
        "fit_on": "train",
        "rows": int(len(train)),
        "numeric": numeric,
        "categorical": categorical,
        "target": _target_stats(train, schema),
        "missing_fills": fills,
    }


def _target_stats(train: pd.DataFrame, schema: FeatureSchema) -> dict[str, Any]:
    y = train[schema.target]
    if schema.task.is_classification:
        counts = y.value_counts()
        classes = list(schema.classes)
        total = float(len(y))
        return {
            "classes": classes,
            "counts": {str(c): int(counts.get(c, 0)) for c in classes},
            "prior": [float(counts.get(c, 0)) / total for c in classes],
        }
    values = y.astype("float64")
    log_values = np.log1p(values.clip(lower=0))
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=0)),
        "median": float(values.median()),
        "min": float(values.min()),
        "max": float(values.max()),
        "skew": float(values.skew()),
        "log1p_mean": float(log_values.mean()),
        "log1p_std": float(log_values.std(ddof=0)),
    }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value
