"""The evaluation report: the task's metrics, per class and per slice, and plots that render anywhere."""

from __future__ import annotations

import numpy as np
import pytest

from loopline.config import EvaluateParams
from loopline.metrics import CLASSIFICATION_METRICS
from models.baselines import fit_baselines
from models.evaluate import evaluate, plot_evaluation
from models.torch_predict import predict
from toy import model_for, toy_data, trained_model_for


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_classification_is_scored_per_class_with_its_confusion_matrix_and_curves(task: str, tmp_path) -> None:
    data = toy_data(task)
    model = trained_model_for(data, epochs=3)
    test = data.frames["test"]
    pred = predict(model, test, data.schema)
    baselines = {
        n: b.predict(test, data.schema) for n, b in fit_baselines(data.frames["train"], data.schema, 0).items()
    }
    result = evaluate(pred, baselines, test, data.schema, EvaluateParams())

    assert set(result.metrics) == {"model", "majority", "linear", "hist_gradient_boosting"}
    assert tuple(result.metrics["model"]) == CLASSIFICATION_METRICS
    assert result.metrics["model"]["accuracy"] > result.metrics["majority"]["accuracy"]
    classes = [str(c) for c in data.schema.classes]
    assert result.classes["classes"] == classes and list(result.classes["per_class"]) == classes
    matrix = np.array(result.classes["confusion_matrix"])
    assert matrix.shape == (len(classes), len(classes)) and matrix.sum() == len(test)
    assert [v["support"] for v in result.classes["per_class"].values()] == matrix.sum(axis=1).tolist()

    written = plot_evaluation(test, pred, data.schema, tmp_path)
    assert written == ["confusion_matrix.png", "roc_curve.png", "pr_curve.png"]
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in written)


def test_slices_cover_every_row_and_small_slices_are_not_judged() -> None:
    data = toy_data()
    test = data.frames["test"].copy()
    test.loc[test.index[:5], "c"] = None  # a handful of rows with a missing category: their own slice
    pred = predict(model_for(data), test, data.schema)
    result = evaluate(pred, {}, test, data.schema, EvaluateParams(min_slice_rows=30))
    slices = result.slices["c"]
    assert sum(s["rows"] for s in slices.values()) == len(test)
    assert slices["(missing)"]["rows"] == 5 and slices["(missing)"]["judged"] is False
    assert all(s["judged"] for name, s in slices.items() if name != "(missing)")
