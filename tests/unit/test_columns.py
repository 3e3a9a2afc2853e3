"""Column-wise validation of a table of records (loopline.columns): the request model's rules, by column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import REPO
from loopline.columns import validate_columns
from loopline.schema import load_schema

BIKE = load_schema(REPO / "schemas/bike.yaml")


def rows(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2012-06-01", periods=n, freq="h"),
            "season": ["summer"] * n,
            "hr": list(range(n)),
            "holiday": ["No"] * n,
            "weekday": ["Fri"] * n,
            "workingday": ["Yes"] * n,
            "weathersit": ["Clear"] * (n - 1) + [None],  # nullable: kept as missing
            "temp": np.linspace(15, 25, n),
            "atemp": np.linspace(15, 25, n),
            "hum": [60.0] * n,
            "windspeed": [10.0] * n,
        }
    )


def test_valid_records_pass_and_columns_that_are_not_features_are_listed_not_refused() -> None:
    checked = validate_columns(rows().assign(ride_id="x"), BIKE)
    assert checked.valid.all() and checked.problems == [] and checked.unknown == ["ride_id"]


def test_each_bad_value_is_named_by_column_and_problem_with_the_first_rows() -> None:
    frame = rows(8)
    frame.loc[[1, 2, 5], "temp"] = 70.0
    frame.loc[3, "season"] = "monsoon"
    frame.loc[4, "hr"] = 24
    frame.loc[6, "holiday"] = None  # not nullable
    frame.loc[7, "hum"] = np.inf
    checked = validate_columns(frame, BIKE)
    assert checked.valid.tolist() == [True, False, False, False, False, False, False, False]
    found = {p.column: p for p in checked.problems}
    assert (found["temp"].problem, found["temp"].rows, found["temp"].first) == ("above the maximum 50", 3, [1, 2, 5])
    assert found["temp"].describe() == "`temp`: above the maximum 50 in 3 rows (rows 1, 2, 5)"
    assert found["season"].problem.startswith("not one of the categories (spring, summer")
    assert found["hr"].first == [4] and found["holiday"].problem == "null where a value is required"
    assert found["hum"].problem == "not a finite number"
    assert checked.reasons[3].startswith("season: not one of the categories") and checked.reasons[0] == ""


def test_text_from_a_csv_counts_as_the_number_it_reads_as_and_other_text_is_not_a_number() -> None:
    frame = rows(4).astype({"temp": object, "hr": object})
    frame["temp"] = ["21.5", "abc", "-3", True]
    frame["hr"] = ["7", "8", "x", 9]
    checked = validate_columns(frame, BIKE)
    assert checked.reasons == [
        "",
        "temp: not a number",
        "hr: not one of the categories (0, 1, 2, 3, 4, 5, ...)",
        "temp: not a number",
    ]


def test_a_missing_feature_column_fails_every_row_and_a_bad_time_is_named() -> None:
    frame = rows(3).drop(columns=["windspeed"]).assign(timestamp=["2012-06-01 10:00", "yesterday", None])
    checked = validate_columns(frame, BIKE)
    assert not checked.valid.any()
    found = {(p.column, p.problem): p.rows for p in checked.problems}
    assert found == {("windspeed", "missing column"): 3, ("timestamp", "not an ISO 8601 date/time"): 1}
