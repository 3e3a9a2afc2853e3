"""Multiclass end to end on a real dataset (Palmer penguins, bundled in a registry package): ingest,
gate, export parity, serving with per-class probabilities, and monitoring with Evidently's
classification report."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from conftest import Project, new_project, registered_id, serving
from loopline.features import encode_features
from loopline.schema import load_schema

CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
# A small table: small batches and a larger step than the default, so that 40 epochs are enough.
SMALL_DATA = {"batch_size": 32, "lr": 0.003, "checks": {"skip": ["input_independent_baseline"]}}


@pytest.fixture(scope="module")
def penguins(tmp_path_factory) -> tuple[Project, str, str]:
    project = new_project(tmp_path_factory.mktemp("penguins"))
    project.set_params(data={"source": "penguins"}, train=SMALL_DATA)
    project.dvc("repro")
    registered = project.loopline("register")
    version = registered_id(registered.stdout)
    project.loopline("promote", version, "--force", "--reason", "test: served whatever the gate says")
    return project, version, registered.stdout


def test_the_multiclass_candidate_is_judged_by_every_rule_that_applies_to_its_task(penguins) -> None:
    project, version, output = penguins
    verdict = json.loads(project.path("reports/gate/verdict.json").read_text())
    names = {r["name"] for r in verdict["rules"]}
    assert {
        "threshold:accuracy",
        "threshold:roc_auc",
        "beats:majority:accuracy",
        "beats:linear:roc_auc",
        "recipe_checks",
        "export_parity",
    } <= names
    assert not any(n.endswith((":mae", ":rmse", ":r2")) for n in names)  # regression metrics do not apply
    assert all(r["value"] is not None for r in verdict["rules"])
    assert next(r for r in verdict["rules"] if r["name"] == "threshold:accuracy")["passed"]
    classes = json.loads(project.path("reports/evaluate/classes.json").read_text())
    assert list(classes["per_class"]) == CLASSES
    assert np.array(classes["confusion_matrix"]).shape == (3, 3)
    assert sum(c["support"] for c in classes["per_class"].values()) == len(
        project.read_parquet("data/prepared/test.parquet")
    )
    parity = json.loads(project.path("reports/export/parity.json").read_text())
    assert parity["passed"] and parity["max_abs_diff"] <= parity["atol"]
    # The learned fills travel with the model: the frozen schema holds them.
    frozen = json.loads(project.path(f"registry/versions/{version}/schema.json").read_text())
    assert set(frozen["learned_fills"]) == {
        "bill_length_mm",
        "bill_depth_mm",
        "flipper_length_mm",
        "body_mass_g",
        "sex",
    }


def test_the_service_answers_each_class_probability_and_treats_nulls_as_training_did(penguins) -> None:
    project, version, _ = penguins
    schema = load_schema(project.path(f"registry/versions/{version}/schema.json"))
    rows = pd.concat([project.read_parquet(f"data/prepared/{s}.parquet") for s in ("train", "val", "test")])
    features = [c.name for c in schema.features]
    records = json.loads(rows[features].to_json(orient="records"))
    with_nulls = {**records[0], "bill_length_mm": None, "sex": None}
    as_filled = {
        **records[0],
        "bill_length_mm": schema.learned_fills["bill_length_mm"],
        "sex": schema.learned_fills["sex"],
    }
    with serving(project, log=project.root / "server.log", LOOPLINE_REQUEST_LOG_FLUSH_SECONDS="0.2") as server:
        status, body, _ = server.post("/predict", {"records": records}, {"x-request-id": "all-penguins"})
        assert status == 200 and body["model_version"] == version and len(body["predictions"]) == len(records)
        assert all(
            set(p) == set(CLASSES) and sum(p.values()) == pytest.approx(1, abs=1e-5) for p in body["probabilities"]
        )
        assert body["predictions"] == [max(p, key=p.get) for p in body["probabilities"]]
        session = ort.InferenceSession(
            str(project.path(f"registry/versions/{version}/model.onnx")), providers=["CPUExecutionProvider"]
        )
        enc = encode_features(rows[features], schema)
        direct = session.run(None, {"numeric": enc.numeric, "categorical": enc.categorical})[0]
        served = np.array([[p[c] for c in CLASSES] for p in body["probabilities"]])
        np.testing.assert_allclose(served, direct, atol=1e-6)
        status, nulls, _ = server.post("/predict", {"records": [with_nulls, as_filled]})
        assert status == 200 and nulls["probabilities"][0] == nulls["probabilities"][1]

        truth = rows["species"].tolist()
        labels = [{"request_id": "all-penguins", "record": i, "value": v} for i, v in enumerate(truth)]
        assert server.post("/feedback", {"labels": labels})[1]["unmatched_request_ids"] == []
        time.sleep(1.0)  # the request log and the labels are written within 0.2 s

    checked = project.run(sys.executable, "-m", "monitoring.check", "--hours", "1")
    outcome = json.loads(checked.stdout[checked.stdout.index("{") :])
    summary = json.loads(project.path(outcome["files"]["summary"]).read_text())
    harm = summary["decision"]["harm"]
    assert harm["metric"] == "error rate" and harm["source"] == "labels" and harm["comparison"]["rows"] == len(rows)
    accuracy = float(np.mean(np.array(body["predictions"]) == np.array(truth)))
    assert harm["comparison"]["error"] == pytest.approx(1 - accuracy)
    assert outcome["files"]["performance"].endswith("performance.html")  # Evidently's classification report
