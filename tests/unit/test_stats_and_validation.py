"""Statistics come from the training split only; validation types what passes and explains what fails."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from dataprep.prepare import prepare
from dataprep.validate import quarantine_invalid_rows
from loopline.config import Params
from loopline.schema import load_schema, schema_from_dict


def _raw(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["_source_file"] = "data/external/x.csv"
    frame["_source_row"] = np.arange(1, len(frame) + 1)
    return frame


SCHEMA = schema_from_dict(
    {
        "name": "drift",
        "task": "regression",
        "target": "y",
        "time_column": "t",
        "columns": {
            "t": {"kind": "numeric", "integer": True},
            "x": {"kind": "numeric", "nullable": True, "missing": "median"},
            "c": {"kind": "categorical", "categories": ["a", "b", "c"], "nullable": True, "missing": "mode"},
            "y": {"kind": "numeric"},
        },
    }
)


def test_statistics_and_fills_are_fitted_on_the_training_split_only() -> None:
    n = 1000
    t = np.arange(n)
    # x and c drift over time: the later rows (val, test) look nothing like the early ones.
    frame = pd.DataFrame({"t": t, "x": np.where(t < 700, 1.0, 100.0), "c": np.where(t < 700, "a", "c"), "y": t * 0.5})
    frame.loc[[10, 20, 900], "x"] = np.nan
    frame.loc[[11, 950], "c"] = None
    result = prepare(_raw(frame), SCHEMA, Params())

    train = result.splits["train"]
    assert train["t"].max() < result.splits["val"]["t"].min()
    stats = result.stats
    assert stats["rows"] == len(train)
    assert stats["numeric"]["x"]["mean"] == pytest.approx(train["x"].mean())
    assert stats["numeric"]["x"]["mean"] == pytest.approx(1.0), "a value seen only after the training period leaked"
    assert stats["categorical"]["c"]["vocabulary"] == ["a"]
    assert stats["target"]["mean"] == pytest.approx(train["y"].mean())
    # Nulls in the test split are filled with train's median and mode, not the test split's own.
    assert stats["missing_fills"] == {"x": 1.0, "c": "a"}
    test = result.splits["test"]
    assert test.loc[test["t"] == 900, "x"].item() == 1.0
    assert test.loc[test["t"] == 950, "c"].item() == "a"


def test_exact_duplicates_are_dropped_and_counted() -> None:
    frame = pd.DataFrame({"t": range(30), "x": 1.0, "c": "a", "y": 2.0})
    frame = pd.concat([frame, frame.iloc[[3, 4, 5]]], ignore_index=True)
    result = prepare(_raw(frame), SCHEMA, Params())
    assert result.report["rows"]["duplicates_dropped"] == 3
    assert sum(len(s) for s in result.splits.values()) == 30


def test_valid_rows_get_their_schema_types() -> None:
    schema = load_schema(REPO / "schemas/acs.yaml")
    frame = pd.DataFrame({c.name: ["1"] * 3 for c in schema.columns})
    frame["id"], frame["year"], frame["AGEP"], frame["employed"] = (
        [1, 2, 3],
        [2015, 2016, 2017],
        ["30", 41.5, 7],
        [0, 1, 1.0],
    )
    frame["SCHL"] = [16, "21", 3.0]  # codes may arrive as numbers when read from CSV
    checked = quarantine_invalid_rows(_raw(frame), schema)
    assert checked.quarantined.empty
    assert checked.valid["AGEP"].tolist() == [30.0, 41.5, 7.0]
    assert checked.valid["SCHL"].tolist() == ["16", "21", "3"]
    assert checked.valid["employed"].dtype == "int64"


def test_booleans_are_not_numbers_even_in_a_parquet_batch(tmp_path) -> None:
    schema = load_schema(REPO / "schemas/bike.yaml")
    frame = pd.DataFrame({"temp": [True, False, True]})
    frame.to_parquet(tmp_path / "batch.parquet")
    read = pd.read_parquet(tmp_path / "batch.parquet")["temp"]
    assert read.dtype == bool
    from dataprep.validate import check_column

    check = check_column(read, schema.column("temp"))
    failing = [(mask.tolist(), template) for mask, template, _ in check.failures if mask.any()]
    assert failing == [([True, True, True], "{v} is a boolean, not a number")]
    mixed = check_column(pd.Series([12.5, True], dtype=object), schema.column("temp"))
    assert [m.tolist() for m, t, _ in mixed.failures if m.any()] == [[False, True]]
    hours = check_column(pd.Series([3, False], dtype=object), schema.column("hr"))
    assert [m.tolist() for m, t, _ in hours.failures if m.any()] == [[False, True]]


@pytest.mark.parametrize(
    "text",
    ["2013-12-20 00:00", "2013-12-20T00:00:00Z", "2013-12-20", "2013-12-20T01:00:00+01:00", "2013-12-20 00:00:00.000"],
)
def test_timestamps_are_read_per_value_in_any_iso_8601_form(text: str) -> None:
    from dataprep.validate import parse_datetimes

    # The first value's form must not decide how the others are read.
    parsed = parse_datetimes(pd.Series(["2013-12-19 23:00:00", text, "not a time"]))
    assert parsed.tolist()[:2] == [pd.Timestamp("2013-12-19 23:00"), pd.Timestamp("2013-12-20 00:00")]
    assert pd.isna(parsed.iloc[2])


def test_a_time_that_is_not_iso_8601_is_quarantined_with_the_form_named() -> None:
    schema = schema_from_dict(
        {
            "name": "s",
            "task": "regression",
            "target": "y",
            "time_column": "at",
            "columns": {"at": {"kind": "datetime"}, "x": {"kind": "numeric"}, "y": {"kind": "numeric"}},
        }
    )
    frame = pd.DataFrame({"at": ["2013-12-20 00:00", "2013-12-20T01:00:00Z", "20/12/2013"], "x": 1.0, "y": 2.0})
    checked = quarantine_invalid_rows(_raw(frame), schema)
    assert len(checked.valid) == 2
    assert checked.quarantined["_reason"].tolist() == [
        "at: '20/12/2013' is not an ISO 8601 date/time (e.g. 2012-12-31 23:00 or 2012-12-31T23:00:00Z)"
    ]


def test_a_served_null_meets_the_model_as_the_training_time_imputation_did() -> None:
    from loopline.features import RecordEncoder, encode_features

    n = 300
    frame = pd.DataFrame(
        {"t": range(n), "x": np.linspace(0, 10, n), "c": ["b"] * (n - 100) + ["c"] * 100, "y": np.arange(n) * 0.5}
    )
    frame.loc[[5, 250], "x"] = np.nan
    frame.loc[[6, 260], "c"] = None
    result = prepare(_raw(frame), SCHEMA, Params())
    fills = result.stats["missing_fills"]
    assert result.schema.learned_fills == fills  # frozen with the model by prepare
    frozen = schema_from_dict(result.schema.to_dict())
    encode = RecordEncoder(frozen)
    served_nulls = encode([{"t": 1, "x": None, "c": None}, {"t": 1}])
    as_trained = encode([{"t": 1, "x": fills["x"], "c": fills["c"]}] * 2)
    np.testing.assert_array_equal(served_nulls.numeric, as_trained.numeric)
    np.testing.assert_array_equal(served_nulls.categorical, as_trained.categorical)
    # The frame encoder (training, export parity, batch scoring) agrees with the request encoder.
    table = encode_features(pd.DataFrame({"t": [1], "x": [None], "c": [None]}), frozen)
    np.testing.assert_array_equal(table.numeric, as_trained.numeric[:1])
    np.testing.assert_array_equal(table.categorical, as_trained.categorical[:1])
    # A value outside the category list is still unknown, not the fill.
    assert encode([{"t": 1, "x": 1.0, "c": "zzz"}]).categorical[0, 0] == -1
