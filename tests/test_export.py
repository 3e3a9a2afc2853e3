"""A user's own data goes through export to a gate verdict (ACS parity: tests/test_serving.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import Project


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


def test_the_golden_batch_reaches_every_category_and_both_ends_of_every_range() -> None:
    from models.export import golden_batch
    from toy import toy_data

    data = toy_data()
    train = data.frames["train"]
    golden = golden_batch(data.frames["test"], data.schema, train)
    for col in data.schema.categorical_features:
        assert set(col.categories) <= set(golden[col.name]), col.name
        assert "__not_a_category__" in set(golden[col.name])
    for col in data.schema.numeric_features:  # the toy schema has no bounds: the training data's ends
        values = pd.to_numeric(golden[col.name], errors="coerce")
        assert values.min() == pytest.approx(train[col.name].min()) and values.max() == pytest.approx(train[col.name].max())
    assert golden["w"].isna().any()  # the nullable column's missing value
