"""The bundled sources are read offline from their packages, with the source's quirks repaired."""

from __future__ import annotations

import pandas as pd
import pytest

from dataprep.sources import load_acs, load_bike, parse_hour


@pytest.mark.parametrize(
    "text, hour", [("12am", 0), ("1am", 1), ("11am", 11), ("12pm", 12), ("1pm", 13), ("11pm", 23), (" 6AM ", 6)]
)
def test_hours_written_as_text_become_0_to_23(text: str, hour: int) -> None:
    assert parse_hour(text) == hour


@pytest.mark.parametrize("text", ["13pm", "noon", "0am", ""])
def test_unreadable_hours_are_left_for_validation_to_report(text: str) -> None:
    assert parse_hour(text) == text


def test_bike_rows_come_in_time_order_with_weekdays_rebuilt_from_the_date() -> None:
    bike = load_bike()
    assert len(bike) == 17379
    assert bike["timestamp"].is_monotonic_increasing
    assert bike["timestamp"].iloc[0] == pd.Timestamp("2011-01-01 00:00")
    assert bike["weekday"].notna().all()
    assert (bike["weekday"] == bike["timestamp"].dt.strftime("%a")).all()
    assert bike["weathersit"].isna().sum() == 1258
    assert bike["_source_file"].iloc[0].endswith("bike-rental-dataset.csv")


def test_acs_joins_analysis_rows_to_their_targets_and_drops_old_predictions() -> None:
    acs = load_acs()
    assert len(acs) == 277_677
    assert acs["employed"].notna().all() and set(acs["employed"]) == {0, 1}
    assert sorted(acs["year"].unique()) == [2015, 2016, 2017, 2018]
    assert "prediction" not in acs.columns and "predicted_probability" not in acs.columns
