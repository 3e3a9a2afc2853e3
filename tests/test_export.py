"""The exported ONNX model reproduces the trained model on the ACS classification data too."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from conftest import Project
from loopline.runtime import read_golden


def test_parity_holds_on_the_acs_classification_data(project: Project) -> None:
    project.set_params(data={"source": "acs"},
                       train={"epochs": 1, "checks": {"skip": ["loss_at_init", "overfit_one_batch",
                                                               "input_independent_baseline", "gradients"]}})
    project.dvc("repro", "export")
    parity = json.loads(project.path("reports/export/parity.json").read_text())
    assert parity["passed"], parity
    assert parity["max_abs_diff"] <= parity["atol"]  # probabilities: the absolute bound alone holds

    golden = read_golden(project.path("artifacts/onnx/golden.json"))
    assert (golden == "__not_a_category__").any().any()  # unseen values are part of the batch
    session = ort.InferenceSession(str(project.path("artifacts/onnx/model.onnx")), providers=["CPUExecutionProvider"])
    n_num = session.get_inputs()[0].shape[1]
    n_cat = session.get_inputs()[1].shape[1]
    for batch in (1, 1024):
        out = session.run(None, {"numeric": np.zeros((batch, n_num), np.float32),
                                 "categorical": np.full((batch, n_cat), -1, np.int64)})[0]
        assert out.shape == (batch,) and ((out >= 0) & (out <= 1)).all()


def test_a_users_own_csv_goes_through_the_whole_pipeline_to_a_gate_verdict(sensor_project: Project) -> None:
    sensor_project.dvc("repro")
    parity = json.loads(sensor_project.path("reports/export/parity.json").read_text())
    assert parity["passed"]
    slices = json.loads(sensor_project.path("reports/evaluate/slices.json").read_text())
    assert set(slices) == {"site"}
    # The sensors' load is a linear function of temperature plus noise: a linear model is already the
    # best there is, so the network cannot beat it by the margin and is not promoted.
    out = sensor_project.loopline("promote", check=False)
    assert out.returncode == 1 and "did not pass the gate" in out.stderr
    verdict = json.loads(sensor_project.path("reports/gate/verdict.json").read_text())
    assert {r["name"] for r in verdict["rules"] if not r["passed"]} <= {"beats:linear:mae", "beats:linear:rmse"}
    assert not sensor_project.path("registry/production.json").exists()
