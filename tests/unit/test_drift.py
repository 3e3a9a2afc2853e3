"""Drift as context on the real bike data (Evidently in process), the outbox without SMTP, incidents."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from dataprep.sources import load_bike
from loopline.config import MonitorParams
from loopline.errors import ConfigError
from loopline.schema import load_schema
from monitoring.alerts import SmtpSettings
from monitoring.check import close_incidents, should_alert
from monitoring.drift import check_window, reference_frame, save_check

BIKE = load_schema(REPO / "schemas/bike.yaml")
T0, T1 = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 8, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def bike() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows (Jan-Jun 2011) as the reference, with a model that is off by a little noise, and
    rows of the same months as served traffic."""
    data = load_bike().sort_values("timestamp")
    rng = np.random.default_rng(0)
    spring = data[data["timestamp"] < "2011-07-01"].reset_index(drop=True)
    noisy = spring["cnt"].to_numpy(np.float64) + rng.normal(0, 40, len(spring))
    reference = reference_frame(spring, BIKE, noisy.clip(0))
    served = spring.sample(600, random_state=1).reset_index(drop=True)
    served = served.assign(prediction=served["cnt"] + rng.normal(0, 40, len(served)))
    return reference, served


def check(window: pd.DataFrame, reference: pd.DataFrame, **policy):
    return check_window(
        window,
        reference,
        BIKE,
        MonitorParams(**policy),
        model_version="v1",
        window_start=T0,
        window_end=T1,
    )


def test_traffic_like_the_training_data_is_not_drift(bike) -> None:
    reference, served = bike
    result, snapshots = check(served.drop(columns="cnt"), reference)
    assert result.verdict == "normal" and result.drift_share < 0.5
    assert {c.column for c in result.columns} == {c.name for c in BIKE.features} | {"prediction"}
    assert set(snapshots) == {"drift"}


def test_a_window_too_small_to_judge_says_insufficient_data(bike) -> None:
    reference, served = bike
    result, snapshots = check(served.head(40), reference, min_rows=100)
    assert result.verdict == "insufficient data" and snapshots == {}
    assert "fewer than the 100 needed" in result.summary()


def test_summer_traffic_against_a_winter_model_is_drift_named_per_column_but_no_verdict_of_its_own(bike) -> None:
    reference, _ = bike
    data = load_bike()
    summer = data[(data["timestamp"] >= "2012-07-01") & (data["timestamp"] < "2012-07-15")].reset_index(drop=True)
    summer = summer.assign(prediction=summer["cnt"] * 1.8)  # the business grew; the model's outputs move too
    result, _ = check(summer.drop(columns="cnt"), reference)
    assert result.verdict == "normal"  # drift is context: the verdict is the model's error (monitoring.decide)
    drifted = {c.column for c in result.drifted}
    assert {"temp", "atemp", "season", "prediction"} <= drifted
    result.importance = {"temp": 0.5, "hr": 0.5}
    assert result.weighted_drift_share == 0.5
    assert f"{len(drifted)} of {len(result.columns)} columns, 50% of the model's importance" in result.summary()


def test_per_column_methods_and_the_drift_share_come_from_the_policy(bike) -> None:
    reference, served = bike
    result, _ = check(
        served.drop(columns="cnt"),
        reference,
        drift={"num_method": "ks", "per_column_method": {"hum": "psi"}, "share": 0.9},
    )
    methods = {c.column: c.method for c in result.columns}
    assert methods["temp"] == "ks" and methods["hum"] == "psi" and methods["season"] != "ks"
    assert result.share_threshold == 0.9


def test_labelled_windows_add_evidentlys_performance_report(bike, tmp_path) -> None:
    reference, served = bike
    window = served.assign(prediction=served["cnt"] + 150)
    window.loc[window.index[:20], "cnt"] = np.nan  # labels not arrived yet for some rows
    result, snapshots = check(window, reference, min_labelled_rows=50)
    assert set(snapshots) == {"drift", "performance"}
    files = save_check(result, snapshots, tmp_path)
    assert files["drift"].stat().st_size > 100_000 and "<html" in files["performance"].read_text()[:1000].lower()
    assert '"verdict"' in files["summary"].read_text()


# ------------------------------------------------------------------------------------------ alerts


def test_smtp_settings_come_from_the_environment() -> None:
    assert SmtpSettings.from_env({}) is None
    settings = SmtpSettings.from_env(
        {
            "LOOPLINE_SMTP_HOST": "mail.example.test",
            "LOOPLINE_SMTP_SECURITY": "ssl",
            "LOOPLINE_SMTP_USER": "u",
            "LOOPLINE_SMTP_PASSWORD": "p",
        }
    )
    assert (settings.host, settings.port, settings.security, settings.user) == ("mail.example.test", 465, "ssl", "u")
    with pytest.raises(ConfigError, match="LOOPLINE_SMTP_SECURITY='tls1': expected starttls, ssl or none"):
        SmtpSettings.from_env({"LOOPLINE_SMTP_HOST": "h", "LOOPLINE_SMTP_SECURITY": "tls1"})


def test_an_open_incident_alerts_again_only_when_it_gets_worse_or_is_due_a_reminder() -> None:
    incidents: dict = {}
    week = timedelta(days=7)
    assert should_alert(incidents, "harm", 1, T0, week)  # new
    assert not should_alert(incidents, "harm", 1, T0 + timedelta(days=1), week)  # the same
    assert should_alert(incidents, "harm", 2, T0 + timedelta(days=2), week)  # worse: escalates
    assert not should_alert(incidents, "harm", 1, T0 + timedelta(days=3), week)  # better, still open
    assert should_alert(incidents, "harm", 1, T0 + timedelta(days=10), week)  # a reminder after a week
    assert close_incidents(incidents, "harm", set()) == ["harm"] and incidents == {}
    assert should_alert(incidents, "harm", 1, T0 + timedelta(days=11), week)  # a new incident


def test_drift_against_the_previous_windows_traffic_needs_a_real_change_not_a_few_hundred_rows_of_noise() -> None:
    from monitoring.drift import drift_from_recent

    data = load_bike()

    def week(start: str) -> pd.DataFrame:
        return data[(data["timestamp"] >= start) & (data["timestamp"] < pd.Timestamp(start) + pd.Timedelta(days=7))]

    calm = drift_from_recent(week("2011-07-08"), week("2011-07-01"), BIKE)
    assert {c.column for c in calm} == {c.name for c in BIKE.features}
    assert not any(c.drifted for c in calm if c.column in ("hr", "weekday", "season"))  # the same hours and days
    seasons = {c.column for c in drift_from_recent(week("2011-12-01"), week("2011-07-01"), BIKE) if c.drifted}
    assert {"temp", "season"} <= seasons
