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


SCHEMA = schema_from_dict({
    "name": "drift", "task": "regression", "target": "y", "time_column": "t",
    "columns": {
        "t": {"kind": "numeric", "integer": True},
        "x": {"kind": "numeric", "nullable": True, "missing": "median"},
        "c": {"kind": "categorical", "categories": ["a", "b", "c"], "nullable": True, "missing": "mode"},
        "y": {"kind": "numeric"},
    },
})


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
    frame["id"], frame["year"], frame["AGEP"], frame["employed"] = [1, 2, 3], [2015, 2016, 2017], ["30", 41.5, 7], [0, 1, 1.0]
    frame["SCHL"] = [16, "21", 3.0]  # codes may arrive as numbers when read from CSV
    checked = quarantine_invalid_rows(_raw(frame), schema)
    assert checked.quarantined.empty
    assert checked.valid["AGEP"].tolist() == [30.0, 41.5, 7.0]
    assert checked.valid["SCHL"].tolist() == ["16", "21", "3"]
    assert checked.valid["employed"].dtype == "int64"
