"""A user's own data goes through export to a gate verdict (ACS parity: tests/test_serving.py)."""

from __future__ import annotations

import json

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
