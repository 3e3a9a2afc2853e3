"""Metric names and how each is computed: the one place that defines them. scikit-learn is imported
only where a metric is computed, so settings and the gate read the names without it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loopline.features import class_probabilities
from loopline.schema import Task

REGRESSION_METRICS = ("mae", "rmse", "r2")
CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc", "pr_auc", "log_loss")
ALL_METRICS = REGRESSION_METRICS + CLASSIFICATION_METRICS
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = {"mae", "rmse", "log_loss"}


def primary_metric(task: str) -> str:
    """The one metric monitoring watches for a task: MAE for regression, accuracy for classification."""
    return "mae" if task == Task.REGRESSION else "accuracy"


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def error_of(metric: str, value: float) -> float:
    """How far from perfect: the metric itself for errors and losses, 1 - score for scores bounded by 1
    (accuracy, F1, AUCs, R2). Margins and tolerances are fractions of this, so they mean the same near
    0.99 as near 0.6."""
    return value if lower_is_better(metric) else 1.0 - value


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    return {
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "r2": float(skm.r2_score(y, pred)),
    }


def _two_columns(proba: np.ndarray) -> np.ndarray:
    """[rows, classes] probabilities in float64, each row summing to one (float32 softmax rows are off
    by a few ulps, which scikit-learn warns about)."""
    proba = class_probabilities(proba)
    return proba / proba.sum(axis=1, keepdims=True)


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """`proba`: P(class 1) for binary, [rows, classes] otherwise; `y`: class indices.
    ROC-AUC and PR-AUC are one-vs-rest macro averages for multiclass; NaN when only one class is present."""
    from sklearn import metrics as skm

    proba2 = _two_columns(proba)
    labels = np.arange(proba2.shape[1])
    pred = proba2.argmax(axis=1)
    both = len(np.unique(y)) > 1
    if proba.ndim == 1:
        auc = skm.roc_auc_score(y, proba) if both else float("nan")
        pr_auc = skm.average_precision_score(y, proba) if both else float("nan")
    else:
        auc = (
            skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
            if len(np.unique(y)) == len(labels)
            else float("nan")
        )
        onehot = np.eye(len(labels))[y]
        pr_auc = skm.average_precision_score(onehot, proba, average="macro") if both else float("nan")
    averaged = {
        f"{name}_macro": float(fn(y, pred, average="macro", labels=labels, zero_division=0))
        for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score))
    }
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        **averaged,
        "roc_auc": float(auc),
        "pr_auc": float(pr_auc),
        "log_loss": float(skm.log_loss(y, proba2, labels=labels)),  # clips at float64 eps itself
    }


def per_class_metrics(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    from sklearn import metrics as skm

    proba2 = _two_columns(proba)
    labels = np.arange(proba2.shape[1])
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, proba2.argmax(axis=1), labels=labels, zero_division=0
    )
    return {
        cls: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for cls, p, r, f, n in zip(classes, precision, recall, f1, support)
    }


def confusion(y: np.ndarray, proba: np.ndarray) -> list[list[int]]:
    from sklearn import metrics as skm

    """Rows: true class; columns: predicted class (schema order)."""
    proba2 = _two_columns(proba)
    return skm.confusion_matrix(y, proba2.argmax(axis=1), labels=np.arange(proba2.shape[1])).tolist()


def task_metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return regression_metrics(y, pred) if task == Task.REGRESSION else classification_metrics(y, pred)


MISSING_SLICE = "(missing)"
"""The slice a row with a null in the slicing column belongs to."""


def slice_labels(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype(object).where(frame[column].notna(), MISSING_SLICE).astype(str)


def metrics_by_slice(
    frame: pd.DataFrame, y: np.ndarray, pred: np.ndarray, task: str, columns: list[str], min_rows: int
) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for column in columns:
        labels = slice_labels(frame, column).to_numpy()
        out[column] = {}
        for value in sorted(set(labels)):
            mask = labels == value
            out[column][value] = {
                "rows": int(mask.sum()),
                "judged": bool(mask.sum() >= min_rows),
                **task_metrics(task, y[mask], pred[mask]),
            }
    return out
