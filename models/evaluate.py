"""`evaluate` stage: the trained model on the whole held-out test split, next to the baselines.

Writes, under reports/evaluate/:
- metrics.json: the task's metrics for the model and for each fitted baseline, on the same rows;
- slices.json: the model's metrics per value of each slice column (rows counted; a slice smaller than
  `evaluate.min_slice_rows` is reported but flagged as too small to judge);
- classes.json (classification): precision, recall, F1 and support per class, and the confusion matrix;
- plots as PNG, which render anywhere: predicted vs actual and residuals (regression), confusion
  matrix, ROC and precision-recall curves (classification).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.atomic import StagedOutputs, write_json
from loopline.config import EvaluateParams, load_params
from loopline.errors import ConfigError
from loopline.features import class_probabilities, encode_target
from loopline.metrics import confusion, metrics_by_slice, per_class_metrics, task_metrics
from loopline.paths import MODEL_FILES, ProjectPaths
from loopline.schema import FeatureSchema
from loopline.stage import run_stage
from models.baselines import load_baselines
from models.torch_predict import load_model, predict

log = logging.getLogger(__name__)


def slice_columns(schema: FeatureSchema, evaluation: EvaluateParams) -> list[str]:
    if evaluation.slices == "auto":
        return [c.name for c in schema.categorical_features if len(c.categories) <= evaluation.max_slice_categories]
    features = {c.name for c in schema.features}
    unknown = [name for name in evaluation.slices if name not in features]
    if unknown:
        raise ConfigError(
            f"params.yaml evaluate.slices: {unknown} are not feature columns of schema "
            f"{schema.name!r}; the features are {sorted(features)}"
        )
    return list(evaluation.slices)


@dataclass
class Evaluation:
    metrics: dict[str, dict[str, float]]
    slices: dict[str, dict[str, dict[str, Any]]]
    classes: dict[str, Any] | None


def evaluate(
    model_pred: np.ndarray,
    baselines: dict[str, np.ndarray],
    frame: pd.DataFrame,
    schema: FeatureSchema,
    evaluation: EvaluateParams,
) -> Evaluation:
    task = schema.task.value
    y = encode_target(frame, schema)
    metrics = {"model": task_metrics(task, y, model_pred)}
    for name, pred in baselines.items():
        metrics[name] = task_metrics(task, y, pred)
    slices = metrics_by_slice(frame, y, model_pred, task, slice_columns(schema, evaluation), evaluation.min_slice_rows)
    classes = None
    if schema.task.is_classification:
        names = [str(c) for c in schema.classes]
        classes = {
            "classes": names,
            "per_class": per_class_metrics(y, model_pred, names),
            "confusion_matrix": confusion(y, model_pred),
        }
    return Evaluation(metrics, slices, classes)


def plot_evaluation(frame: pd.DataFrame, pred: np.ndarray, schema: FeatureSchema, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn import metrics as skm

    y = encode_target(frame, schema)
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(name)

    if not schema.task.is_classification:
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.scatter(y, pred, s=4, alpha=0.3)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        ax.set(xlabel=f"actual {schema.target}", ylabel="predicted", title="Predicted vs actual (test)")
        save(fig, "predicted_vs_actual.png")
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.scatter(pred, y - pred, s=4, alpha=0.3)
        ax.axhline(0, color="black", lw=1)
        ax.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals (test)")
        save(fig, "residuals.png")
        return written

    names = [str(c) for c in schema.classes]
    proba = class_probabilities(pred)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    skm.ConfusionMatrixDisplay(np.asarray(confusion(y, pred)), display_labels=names).plot(ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (test)")
    save(fig, "confusion_matrix.png")
    positives = [1] if pred.ndim == 1 else range(len(names))
    for kind, display in (("roc", skm.RocCurveDisplay), ("pr", skm.PrecisionRecallDisplay)):
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
        for k in positives:
            if (y == k).any() and (y != k).any():
                display.from_predictions(y == k, proba[:, k], name=names[k], ax=ax)
        ax.set_title(("ROC" if kind == "roc" else "Precision-recall") + " curve (test)")
        save(fig, f"{kind}_curve.png")
    return written


def run_evaluate(paths: ProjectPaths | None = None) -> Evaluation:
    paths = paths or ProjectPaths.here()
    params = load_params(paths.params)
    # With train.refit: all the served network learned the test rows; the holdout network (the same
    # recipe's selection run, which did not) is the one the test split can judge.
    holdout = (paths.model_dir / MODEL_FILES["holdout"]).is_file()
    model, schema = load_model(paths.model_dir, "holdout" if holdout else "weights")
    test = pd.read_parquet(paths.split("test"))
    model_pred = predict(model, test, schema)
    fitted = load_baselines(paths.baseline_models)
    baselines = {name: b.predict(test, schema) for name, b in fitted.items()}
    result = evaluate(model_pred, baselines, test, schema, params.evaluate)
    with StagedOutputs() as out:
        write_json(out.path(paths.evaluate_metrics), {"rows": len(test), **result.metrics})
        prediction_frame(model_pred).to_parquet(out.path(paths.test_predictions), index=False)
        write_json(out.path(paths.evaluate_slices), result.slices)
        if result.classes is not None:
            write_json(out.path(paths.evaluate_classes), result.classes)
        plots = out.path(paths.evaluate_plots_dir, directory=True)
        plot_evaluation(test, model_pred, schema, plots)
    log.info("test rows %d: model %s", len(test), _fmt(result.metrics["model"]))
    for name in fitted:
        log.info("test rows %d: %s %s", len(test), name, _fmt(result.metrics[name]))
    return result


def prediction_frame(pred: np.ndarray) -> pd.DataFrame:
    """Outputs as columns: `output` (a value or P(class 1)), or `output_<k>` per class probability."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 1:
        return pd.DataFrame({"output": pred})
    return pd.DataFrame({f"output_{k}": pred[:, k] for k in range(pred.shape[1])})


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def main() -> int:
    return run_stage("evaluate", run_evaluate)


if __name__ == "__main__":
    raise SystemExit(main())
