"""Metric names and how each is computed: the one place that defines them."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

REGRESSION_METRICS = ("mae", "rmse", "r2")
CLASSIFICATION_METRICS = ("accuracy", "roc_auc", "log_loss", "f1_macro")
# Lower is better for these; higher for the rest.
LOWER_IS_BETTER = {"mae", "rmse", "log_loss"}


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "mae": float(skm.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "r2": float(skm.r2_score(y, pred)),
    }


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """`proba`: P(class 1) for binary, [rows, classes] otherwise; `y`: class indices."""
    if proba.ndim == 1:
        proba2 = np.column_stack([1 - proba, proba])
        auc = skm.roc_auc_score(y, proba) if len(np.unique(y)) > 1 else float("nan")
    else:
        proba2 = proba
        auc = skm.roc_auc_score(y, proba, multi_class="ovr") if len(np.unique(y)) > 1 else float("nan")
    labels = np.arange(proba2.shape[1])
    pred = proba2.argmax(axis=1)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "roc_auc": float(auc),
        "log_loss": float(skm.log_loss(y, np.clip(proba2, 1e-7, 1 - 1e-7), labels=labels)),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
    }


def task_metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return regression_metrics(y, pred) if task == "regression" else classification_metrics(y, pred)
