"""The feature schema: bundled schemas load, and a schema that contradicts itself is refused by name."""

from __future__ import annotations

import copy

import pytest

from conftest import REPO, SENSOR_SCHEMA
from loopline.errors import SchemaError
from loopline.schema import Kind, Task, load_schema, schema_from_dict


def test_bike_schema_describes_a_regression_over_calendar_and_weather() -> None:
    schema = load_schema(REPO / "schemas/bike.yaml")
    assert schema.task is Task.REGRESSION and schema.target == "cnt"
    assert schema.time_column == "timestamp"
    assert [c.name for c in schema.numeric_features] == ["temp", "atemp", "hum", "windspeed"]
    assert [c.name for c in schema.categorical_features] == [
        "season",
        "hr",
        "holiday",
        "weekday",
        "workingday",
        "weathersit",
    ]
    assert set(schema.drop_columns) == {"casual", "registered"}


def test_acs_schema_is_binary_with_the_year_as_time_and_no_id_among_features() -> None:
    schema = load_schema(REPO / "schemas/acs.yaml")
    assert schema.task is Task.BINARY and schema.classes == (0, 1)
    assert schema.column("id").kind is Kind.ID
    feature_names = [c.name for c in schema.features]
    assert "id" not in feature_names and "year" not in feature_names and "employed" not in feature_names
    assert len(feature_names) == 16


def test_a_schema_round_trips_through_its_dict_form() -> None:
    schema = load_schema(REPO / "schemas/bike.yaml")
    assert schema_from_dict(schema.to_dict()) == schema


def _with(change) -> dict:
    raw = copy.deepcopy(SENSOR_SCHEMA)
    change(raw)
    return raw


CONTRADICTIONS = {
    "target not a column": (lambda s: s.update(target="power"), "target: 'power' is not one of the columns"),
    "min above max": (
        lambda s: s["columns"]["temp"].update(min=5, max=1),
        "columns.temp: min (5) is greater than max (1)",
    ),
    "regression on a category": (lambda s: s.update(target="site"), "regression needs a numeric target"),
    "binary with three classes": (
        lambda s: s.update(task="binary", target="site"),
        "binary needs exactly 2 target categories; 'site' has 3",
    ),
    "nullable target": (lambda s: s["columns"]["load"].update(nullable=True), "the target cannot be nullable"),
    "policy on a non-nullable column": (
        lambda s: s["columns"]["temp"].update(missing="median"),
        "columns.temp.missing: a missing-value policy is set but the column is not nullable",
    ),
    "median of a category": (
        lambda s: s["columns"]["site"].update(nullable=True, missing="median"),
        "columns.site.missing: 'median' needs a numeric column",
    ),
    "fill value outside the categories": (
        lambda s: s["columns"]["site"].update(nullable=True, missing="fill", fill_value="west"),
        "columns.site.fill_value: 'west' is not one of the column's categories",
    ),
    "range on a category": (
        lambda s: s["columns"]["site"].update(min=0),
        "columns.site.min: only numeric columns take it",
    ),
    "repeated categories": (
        lambda s: s["columns"]["site"].update(categories=["north", "north"]),
        "repeated categories: north",
    ),
    "unknown kind": (lambda s: s["columns"]["temp"].update(kind="float"), "columns.temp.kind: 'float' is not one of"),
    "time column that is a category": (
        lambda s: s.update(time_column="site"),
        "time_column: must be a datetime or numeric column",
    ),
    "no way to split without leaking": (
        lambda s: s.update(time_column=None),
        "rows_independent: the schema has no time_column and no group_column",
    ),
    "dropped and defined": (lambda s: s.update(drop_columns={"temp": "x"}), "'temp' is both dropped and defined"),
    "reserved name": (lambda s: s["columns"].update(_reason={"kind": "numeric"}), "'_reason' is reserved"),
    "unknown field": (lambda s: s["columns"]["temp"].update(maximum=3), "columns.temp.maximum: unknown field"),
    "a datetime feature the model would ignore": (
        lambda s: s["columns"].update(installed={"kind": "datetime"}),
        "columns.installed.kind: a datetime column other than time_column cannot be a model input",
    ),
}


@pytest.mark.parametrize("case", CONTRADICTIONS, ids=list(CONTRADICTIONS))
def test_a_contradictory_schema_is_refused_with_the_field_named(case: str) -> None:
    change, message = CONTRADICTIONS[case]
    with pytest.raises(SchemaError) as err:
        schema_from_dict(_with(change), source="schemas/sensors.yaml")
    assert str(err.value).startswith("schemas/sensors.yaml: ")
    assert message in str(err.value)


def test_a_missing_schema_file_is_named(tmp_path) -> None:
    with pytest.raises(SchemaError, match="nope.yaml: schema file not found"):
        load_schema(tmp_path / "nope.yaml")
