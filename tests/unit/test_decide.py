"""The loop's decisions (monitoring.decide) and the confidence they rest on (loopline.evidence)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from loopline.config import LiveParams, MonitorParams, RecalibrateParams
from loopline.evidence import compare_paired, compare_to_reference, row_errors
from loopline.schema import load_schema
from monitoring.decide import (
    estimate_errors,
    input_problems,
    judge_challenger,
    judge_harm,
    judge_level,
    judge_previous,
    unit_change,
)

BIKE = load_schema(REPO / "schemas/bike.yaml")
RNG = np.random.default_rng(0)


def errors(n: int, scale: float, seed: int = 0) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).normal(0, scale, n))


# ------------------------------------------------------------------------------------- evidence
def test_a_paired_comparison_finds_a_small_consistent_gain_that_unpaired_rows_would_hide() -> None:
    hard = errors(300, 50, seed=1)  # what both models find hard dominates each row's error
    challenger, incumbent = hard * 0.95, hard
    paired = compare_paired(challenger, incumbent, confidence=0.9)
    assert paired.change == pytest.approx(-0.05) and paired.below(0)
    unpaired = compare_to_reference(errors(300, 50, seed=2) * 0.95, incumbent, confidence=0.9)
    assert not unpaired.below(0)  # other rows: sampling noise swamps a 5% gain


def test_blocks_of_correlated_rows_widen_the_interval() -> None:
    day_effect = np.repeat(errors(7, 40, seed=3), 24)  # 7 days of 24 rows that move together
    a, b = day_effect + errors(168, 5, seed=4), day_effect * 1.02 + errors(168, 5, seed=5)
    rows = compare_paired(a, b)
    days = compare_paired(a, b, blocks=np.repeat(np.arange(7), 24))
    assert days.blocks == 7 and (days.high - days.low) > (rows.high - rows.low)


def test_row_errors_are_absolute_errors_or_wrong_classes() -> None:
    assert row_errors("regression", np.array([1.0, 5.0]), np.array([2.0, 2.0])).tolist() == [1.0, 3.0]
    assert row_errors("binary", np.array([1, 0]), np.array([0.9, 0.8])).tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------------------- harm
def test_the_models_own_error_level_is_normal_and_a_clear_increase_is_harm_with_a_severity() -> None:
    params = MonitorParams()
    normal = errors(700, 60, seed=6)
    assert judge_harm(errors(168, 60, seed=7), normal, params).level == 0
    assert judge_harm(errors(168, 30, seed=7), normal, params).level == 0  # better than normal: no alarm
    assert judge_harm(errors(168, 90, seed=7), normal, params).name in ("degraded", "badly degraded")
    assert judge_harm(errors(168, 200, seed=7), normal, params).name == "failing"


def test_a_few_rows_a_little_worse_are_not_harm_but_the_same_increase_on_many_rows_is() -> None:
    normal = errors(700, 60, seed=6)
    few = judge_harm(errors(30, 80, seed=8), normal, MonitorParams())
    many = judge_harm(errors(3000, 80, seed=8), normal, MonitorParams())
    assert few.level == 0 and few.comparison.low < 0.2  # too wide an interval to say
    assert many.level == 1 and many.comparison.change == pytest.approx(1 / 3, abs=0.08)


def test_the_label_free_estimate_follows_the_error_where_inputs_predict_it() -> None:
    x = RNG.uniform(0, 1, (2000, 2))
    err = 10 + 100 * x[:, 0]  # the model is worse where x0 is high
    window = RNG.uniform(0.7, 1, (300, 2))  # traffic moved to where it is bad
    estimated = estimate_errors("regression", x, err, window, np.zeros(300))
    assert estimated.mean() == pytest.approx(10 + 100 * 0.85, rel=0.1)
    assert estimate_errors("binary", x, err, window, np.full(300, 0.9)).mean() == pytest.approx(0.1)


# ------------------------------------------------------------------------------ live promotion
def test_a_challenger_is_promoted_retired_or_kept_by_the_paired_evidence() -> None:
    live = LiveParams(min_rows=100, max_windows=3)
    prod = errors(500, 60, seed=9)
    better = judge_challenger("c", prod * 0.9, prod, live, windows=1)
    worse = judge_challenger("c", prod * 1.1, prod, live, windows=1)
    same = judge_challenger("c", prod * (1 + RNG.normal(0, 0.01, 500)), prod, live, windows=1)
    assert (better.decision, worse.decision, same.decision) == ("promote", "retire", "wait")
    assert judge_challenger("c", prod[:20], prod[:20], live, windows=1).decision == "wait"  # too few rows
    assert judge_challenger("c", prod * (1 + RNG.normal(0, 0.01, 500)), prod, live, windows=3).decision == "retire"
    assert "less error than production: -10% error" in better.reason


def test_a_promoted_model_worse_than_the_one_it_replaced_is_rolled_back() -> None:
    live = LiveParams()
    old = errors(400, 60, seed=10)
    assert judge_previous("old", old * 1.3, old, live, windows=1).decision == "rollback"
    assert judge_previous("old", old * 0.9, old, live, windows=1).decision == "release"
    assert judge_previous("old", old * 1.3, old, LiveParams(rollback=False), windows=1).decision == "release"


# ----------------------------------------------------------------------------------- level shifts
def days_of(n_days: int, per_day: int = 24) -> np.ndarray:
    return np.repeat(np.arange(n_days), per_day)


def test_a_steady_factor_on_the_true_counts_is_a_level_to_correct_and_its_offset_undoes_it() -> None:
    rng = np.random.default_rng(3)
    predictions = rng.gamma(2.0, 80.0, 5 * 24)
    truth = np.round((1 + predictions) * np.exp(rng.normal(0, 0.3, predictions.size)) * 1.5 - 1).clip(0)
    level = judge_level(truth, predictions, "log1p", 1.2, RecalibrateParams(), blocks=days_of(5))
    assert level is not None and level.act and level.days == 5
    assert level.change == pytest.approx(0.5, abs=0.1) and level.low > 0
    assert np.expm1(level.offset) == pytest.approx(level.change)
    assert "true values +" in level.describe() and "over 5 days" in level.describe()


def test_noise_a_small_change_and_one_unusual_day_are_not_levels() -> None:
    rng = np.random.default_rng(4)
    predictions = rng.gamma(2.0, 80.0, 7 * 24)
    noisy = (1 + predictions) * np.exp(rng.normal(0, 0.3, predictions.size)) - 1
    assert not judge_level(noisy, predictions, "log1p", 1.2, RecalibrateParams(), blocks=days_of(7)).act
    small = (1 + predictions) * 1.05 * np.exp(rng.normal(0, 0.02, predictions.size)) - 1
    found = judge_level(small, predictions, "log1p", 1.2, RecalibrateParams(), blocks=days_of(7))
    assert found.low > 0 and not found.act  # real, but below min_change
    one_day = predictions.copy()
    one_day[:24] *= 4  # a festival: the mean moves, the days disagree
    assert not judge_level(one_day, predictions, "log1p", 1.2, RecalibrateParams(), blocks=days_of(7)).act


def test_a_standardised_target_levels_in_its_own_units_and_too_few_days_decide_nothing() -> None:
    predictions = np.linspace(10, 20, 4 * 24)
    level = judge_level(predictions + 3.0, predictions, "standardize", 5.0, RecalibrateParams(), blocks=days_of(4))
    assert level.offset == pytest.approx(3.0) and level.change == pytest.approx(0.6) and level.act
    assert (
        judge_level(predictions + 3.0, predictions, "standardize", 5.0, RecalibrateParams(), blocks=days_of(2, 48))
        is None
    )
    assert judge_level(predictions, predictions, "none", 1.0, RecalibrateParams(), blocks=days_of(4)) is None


# --------------------------------------------------------------------------------- input contract
def test_units_changed_by_a_factor_are_named_and_seasonal_movement_is_not() -> None:
    reference = RNG.uniform(0.2, 0.9, 3000)  # a fraction, as the model learned it
    assert "a percentage where a fraction was seen" in unit_change(reference[:300] * 100, reference)
    assert unit_change(reference[:300] / 100, reference) is not None
    summer = np.clip(reference[:300] + 0.25, 0, 1)  # warmer weeks: moved, but not by a unit
    assert unit_change(summer, reference) is None
    celsius = RNG.normal(15, 8, 3000)
    assert "Kelvin" in unit_change(celsius[:300] + 273.15, celsius)


def test_refused_requests_missing_values_and_units_are_each_named_per_column() -> None:
    from dataprep.sources import load_bike

    data = load_bike()
    reference = data[data["timestamp"] < "2011-07-01"]
    window = data[(data["timestamp"] >= "2011-07-01") & (data["timestamp"] < "2011-07-08")].reset_index(drop=True)
    window = window.assign(hum=window["hum"] / 100, served_at=pd.Timestamp("2026-01-01", tz="UTC"))
    missing = pd.DataFrame(False, index=window.index, columns=[c.name for c in BIKE.features])
    missing.loc[: len(window) // 2, "weathersit"] = True
    refused = pd.DataFrame(
        {
            "refused_at": pd.to_datetime(["2026-01-01T10:00:00Z"] * 30),
            "columns": ["temp"] * 30,
            "problem": ["above its maximum 50"] * 30,
        }
    )
    problems = {
        (p.kind, p.column): p for p in input_problems(window, missing, reference, refused, 7, BIKE, MonitorParams())
    }
    assert set(problems) == {("refused", "temp"), ("missing", "weathersit"), ("units", "hum")}
    assert "30 of 37 requests refused" in problems["refused", "temp"].detail
    assert problems["refused", "temp"].since == "2026-01-01 10:00 UTC"
    assert "a fraction where a percentage was seen" in problems["units", "hum"].detail
    clean = input_problems(
        window.assign(hum=window["hum"] * 100), missing & False, reference, refused.head(0), 7, BIKE, MonitorParams()
    )
    assert clean == []
