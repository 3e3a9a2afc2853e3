"""The ingest and prepare stages, run by real DVC in a temporary git repository."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import OUTPUTS, SENSOR_SCHEMA, Project, sensor_frame


def test_repro_builds_splits_and_a_second_repro_changes_nothing(project: Project) -> None:
    project.dvc("repro", "prepare")
    metrics = json.loads(project.path("reports/data/metrics.json").read_text())
    assert metrics["rows"]["raw"] == 17379
    assert metrics["rows"]["train"] + metrics["rows"]["val"] + metrics["rows"]["test"] == 17379
    assert project.path("reports/data/report.html").read_text().startswith("<!doctype html>")

    before = project.fingerprint(*OUTPUTS)
    again = project.dvc("repro", "prepare")
    assert "Data and pipelines are up to date" in again.output
    assert project.fingerprint(*OUTPUTS) == before


def test_bike_source_drops_leaky_columns_and_repairs_the_source(project: Project) -> None:
    project.dvc("repro", "prepare")
    train = project.read_parquet("data/prepared/train.parquet")
    assert "casual" not in train.columns and "registered" not in train.columns
    assert train["weekday"].notna().all()
    assert set(train["hr"].unique()) == set(range(24))
    assert train["weathersit"].isna().sum() > 0, "blank weather stays a missing value"


def test_as_of_hides_rows_from_the_future(project: Project) -> None:
    project.set_params(data={"as_of": "2011-03-31"})
    project.dvc("repro", "prepare")
    frames = [project.read_parquet(f"data/prepared/{s}.parquet") for s in ("train", "val", "test")]
    latest = max(f["timestamp"].max() for f in frames)
    assert latest == pd.Timestamp("2011-03-31 23:00")


def test_acs_source_splits_by_survey_year(project: Project) -> None:
    project.set_params(data={"source": "acs"})
    project.dvc("repro", "prepare")
    report = json.loads(project.path("reports/data/report.json").read_text())
    assert report["rows"]["raw"] == 277_677
    assert report["task"] == "binary"
    split = report["split"]
    assert (split["train"]["time_from"], split["train"]["time_to"]) == (2015, 2016)
    assert (split["val"]["time_from"], split["test"]["time_from"]) == (2017, 2018)
    stats = json.loads(project.path("data/prepared/stats.json").read_text())
    assert stats["target"]["classes"] == [0, 1]
    assert "prediction" not in project.read_parquet("data/prepared/train.parquet").columns


def test_invalid_rows_are_quarantined_with_one_reason_each(sensor_project: Project) -> None:
    frame = sensor_frame().astype({"temp": object})
    frame.loc[5, "temp"] = "warm"
    frame.loc[17, "site"] = "west"
    frame.loc[30, "load"] = -4
    frame.loc[31, "ts"] = "yesterday"
    frame.loc[40, ["temp", "site"]] = [99, None]
    frame.to_csv(sensor_project.path("data/external/sensors.csv"), index=False)
    sensor_project.dvc("repro", "prepare")

    quarantined = sensor_project.read_parquet("data/prepared/quarantine.parquet")
    reasons = dict(zip(quarantined["_source_row"], quarantined["_reason"]))
    assert reasons == {
        6: "temp: 'warm' is not a number",
        18: "site: 'west' is not one of the categories ['north', 'south', 'east']",
        31: "load: -4.0 is below the minimum 0",
        32: "ts: 'yesterday' is not an ISO 8601 date/time (e.g. 2012-12-31 23:00 or 2012-12-31T23:00:00Z)",
        41: "site: missing value (the column is not nullable); temp: 99.0 is above the maximum 60",
    }
    assert set(quarantined["_source_file"]) == {"data/external/sensors.csv"}
    prepared = sum(len(sensor_project.read_parquet(f"data/prepared/{s}.parquet")) for s in ("train", "val", "test"))
    assert prepared == len(frame) - 5
    assert json.loads(sensor_project.path("reports/data/metrics.json").read_text())["rows"]["quarantined"] == 5


def test_appended_batches_join_the_source(sensor_project: Project) -> None:
    batch = sensor_frame(rows=48, seed=1)
    batch["ts"] = pd.date_range("2024-02-01", periods=48, freq="h").strftime("%Y-%m-%d %H:%M:%S")
    batch.to_parquet(sensor_project.path("data/external/batches/2024-02-01.parquet"), index=False)
    sensor_project.dvc("repro", "prepare")
    test = sensor_project.read_parquet("data/prepared/test.parquet")
    assert test["ts"].max() == pd.Timestamp("2024-02-02 23:00")


def _write_csv(project: Project, frame: pd.DataFrame, name: str = "data/external/sensors.csv") -> None:
    project.path(name).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(project.path(name), index=False)


def _missing_column(project: Project) -> None:
    _write_csv(project, sensor_frame().drop(columns=["temp"]))


def _wrong_types(project: Project) -> None:
    frame = sensor_frame()
    frame["temp"] = frame["temp"].astype(object)
    frame.loc[::10, "temp"] = "warm"  # 30 of 300 rows: over the 5% limit
    _write_csv(project, frame)


def _empty_file(project: Project) -> None:
    project.path("data/external/sensors.csv").write_text("")


def _batch_all_invalid(project: Project) -> None:
    batch = sensor_frame(rows=12, seed=3)
    batch["site"] = "atlantis"
    _write_csv(project, batch, "data/external/batches/2024-03.csv")


def _contradictory_schema(project: Project) -> None:
    schema = json.loads(json.dumps(SENSOR_SCHEMA))
    schema["columns"]["temp"].update(min=60, max=-30)
    project.path("schemas/sensors.yaml").write_text(yaml.safe_dump(schema))


BAD_INPUTS = {
    "source missing a schema column": (_missing_column, ["data/external/sensors.csv", "missing column(s) 'temp'"]),
    "values of the wrong type": (
        _wrong_types,
        [
            "30 of 300 rows (10.0%) are invalid",
            "column 'temp' in 30 rows",
            "sensors.csv row 1: temp: 'warm' is not a number",
        ],
    ),
    "empty file": (_empty_file, ["data/external/sensors.csv: the file is empty"]),
    "batch whose rows are all invalid": (
        _batch_all_invalid,
        ["2024-03.csv: all 12 rows of this file are invalid", "column 'site' in 12 rows", "row 1: site: 'atlantis'"],
    ),
    "schema that contradicts itself": (
        _contradictory_schema,
        ["schemas/sensors.yaml: columns.temp: min (60) is greater than max (-30)"],
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_fails_clearly_and_keeps_the_last_good_outputs(sensor_project: Project, case: str) -> None:
    break_input, expected_messages = BAD_INPUTS[case]
    sensor_project.dvc("repro", "prepare")
    good = sensor_project.fingerprint(*OUTPUTS)

    break_input(sensor_project)
    failed = sensor_project.dvc("repro", "prepare", check=False)

    assert failed.returncode != 0
    for expected in expected_messages:
        assert expected in failed.output, f"{expected!r} not in:\n{failed.output}"
    # The prepared data and its reports are what later stages read: they are the last good ones.
    # (When ingest itself succeeded, data/raw holds the new source as it came; prepare refused it.)
    after = sensor_project.fingerprint(*OUTPUTS)
    assert {k: v for k, v in after.items() if not k.startswith("data/raw")} == {
        k: v for k, v in good.items() if not k.startswith("data/raw")
    }
    assert set(after) == set(good)


def test_push_then_pull_into_a_fresh_clone_restores_the_data(project: Project, tmp_path) -> None:
    project.dvc("repro", "prepare")
    project.commit("prepared data")
    project.dvc("push", "--with-deps", "prepare")
    prepared = project.fingerprint("data/prepared")

    clone = Project(tmp_path / "clone", remote=project.remote)
    project.run("git", "clone", "-q", str(project.root), str(clone.root))
    clone.dvc("pull", "--with-deps", "prepare")
    assert clone.fingerprint("data/prepared") == prepared
    assert "up to date" in clone.dvc("status", "--with-deps", "prepare").output
