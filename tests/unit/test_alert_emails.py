"""Which incidents email (monitoring.check.plan_alerts) and what the emails say (compose_alert)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from loopline.config import Params
from monitoring.check import Outcome, compose_alert, plan_alerts
from monitoring.decide import Decision, InputProblem, judge_challenger, judge_harm
from monitoring.drift import ColumnDrift, WindowCheck

PARAMS = Params()
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
RNG = np.random.default_rng(0)
NORMAL = np.abs(RNG.normal(0, 60, 700))


def window(verdict: str = "degraded") -> WindowCheck:
    return WindowCheck(
        "0123456789abcdef",
        "2026-11-23T10:00:00+00:00",
        "2026-11-23T11:00:00+00:00",
        168,
        verdict,
        0.5,
        0.5,
        [ColumnDrift("temp", "ks", 0.05, 0.001, True), ColumnDrift("hr", "chisquare", 0.05, 0.5, False)],
        {"temp": 0.25, "hr": 0.75},
        100,
        {},
        ("2011-07-08T00:00:00+00:00", "2011-07-14T23:00:00+00:00"),
    )


def degraded() -> Decision:
    return Decision(judge_harm(np.abs(RNG.normal(0, 110, 168)), NORMAL, PARAMS.monitor, metric="MAE"))


def test_a_harm_email_names_the_replayed_days_the_rounded_numbers_the_challenger_and_what_to_do() -> None:
    decision = degraded()
    decision.shadows.append(
        judge_challenger("fedcba9876543210", NORMAL[:168] * 0.7, NORMAL[:168], PARAMS.promote, windows=1)
    )
    subject, body = compose_alert({"kind": "harm"}, window(), decision, Outcome(window(), {}, retrain="harm"), PARAMS)
    assert (
        subject.startswith("model 01234567 ")
        and "MAE +" in subject
        and "2011-07-08 00:00 to 2011-07-14 23:00" in subject
    )
    assert "(its test split)" in body and "90% interval" in body and "168 rows" in body
    assert "Challenger fedcba98 against production on the same labelled records: -30%" in body
    assert "Drift, as context: 1 of 2 columns" in body and "temp (25% of importance)" in body
    assert "\nWhat to do: Nothing yet: a new candidate is being trained" in body
    assert "0.0000" not in body and "e-0" not in body  # rounded, no raw floats


def test_an_open_input_problem_changes_what_the_harm_email_asks_for() -> None:
    decision = degraded()
    decision.inputs.append(InputProblem("units", "hum", "looks like a fraction where a percentage was seen"))
    _, body = compose_alert({"kind": "harm"}, window(), decision, Outcome(window(), {}), PARAMS)
    assert "An input problem is open" in body


def test_harm_alerts_once_per_severity_and_escalates_when_candidates_keep_failing() -> None:
    state = {"incidents": {}, "shadow_windows": {}, "failed_candidates": 0}
    decision = degraded()
    assert [a["kind"] for a in plan_alerts(state, decision, T0, PARAMS)] == ["harm"]
    assert plan_alerts(state, decision, T0 + timedelta(days=3), PARAMS) == []  # unchanged: no second email
    state["failed_candidates"] = PARAMS.promote.escalate_after  # e.g. rejected by the gate
    [escalation] = plan_alerts(state, decision, T0 + timedelta(days=5), PARAMS)
    assert escalation["kind"] == "escalation"
    subject, body = compose_alert(escalation, window(), decision, Outcome(window(), {}), PARAMS)
    assert "still" in subject and "candidates in a row failed" in subject
    assert "--force --reason" in body
    calm = Decision(judge_harm(NORMAL[:168], NORMAL, PARAMS.monitor, metric="MAE"))
    assert plan_alerts(state, calm, T0 + timedelta(days=6), PARAMS) == [] and state["incidents"] == {}


def test_a_promoted_level_correction_is_named_as_one_with_its_factor_and_where_it_was_measured() -> None:
    decision = degraded()
    verdict = judge_challenger("fedcba9876543210", NORMAL[:168] * 0.7, NORMAL[:168], PARAMS.promote, windows=1)
    fix = {"parent": "0123456789abcdef", "change": 0.5, "window": {"period": "2011-07-01 00:00 to 2011-07-07 23:00"}}
    action = {"action": "promoted", "version": "fedcba9876543210", "evidence": verdict.to_dict(), "recalibration": fix}
    subject, body = compose_alert(
        {"kind": "promoted", "action": action}, window(), decision, Outcome(window(), {}), PARAMS
    )
    assert subject.startswith("promoted fedcba98: -30% error against 01234567")
    assert body.startswith(
        "The level correction fedcba98 (01234567 with its output moved by +50%, measured on 2011-07-01 00:00 to "
        "2011-07-07 23:00) was promoted: in shadow, on the labelled live records of 2011-07-08 00:00"
    )


def test_a_level_correction_put_in_shadow_is_in_the_harm_email_once_with_what_to_do() -> None:
    level = {"change": 2.4, "rows": 336, "days": 14, "low": 2.21, "high": 2.59}
    action = {"action": "recalibrated", "version": "fedcba9876543210", "parent": "0123456789abcdef", "level": level}
    outcome = Outcome(window(), {}, actions=[action], retrain="harm")
    _, body = compose_alert({"kind": "harm"}, window(), degraded(), outcome, PARAMS)
    assert (
        "This check also: put fedcba98 in shadow: 01234567 with its output moved by +240%, measured on 336 "
        "labelled rows over 14 days (interval +221% to +259%)." in body
    )
    assert (
        "What to do: Nothing yet: the true values sit +240% against the predictions, so production with its "
        "output moved by that much (fedcba98) is in shadow and replaces it at the next check if it does better "
        "on the labelled records; a new candidate is being trained" in body
    )
    assert body.count("Nothing yet") == 1
