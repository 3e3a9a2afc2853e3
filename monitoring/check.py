"""One monitoring run over the production model's recent traffic, without any orchestrator.

    python -m monitoring.check [--hours 168]        # or the `monitoring` Prefect flow, which calls this

It reads the window of the request log, with the labels that arrived, and decides (monitoring.decide):

- harm: the production model's error against its normal error (its test split), from labels or, before
  they arrive, from a label-free estimate; severity escalates, and an open incident alerts again only
  when it gets worse (or after `monitor.alerts.remind_hours`);
- the input contract: refused requests, missing values, unit-like changes per column; an incident of its
  own that names the columns and starts no retraining;
- models in shadow: a challenger promoted on live evidence or retired, the model a promotion replaced
  watched for a rollback;
- drift (Evidently, weighted by each feature's importance to the model) as context for people.

It saves summary.json and Evidently's HTML under reports/monitoring/<window end>/, adds the run to the
Evidently workspace, emails what a person should know (the outbox keeps what cannot be sent yet) and
says whether to train a new candidate: on harm, or when `monitor.refresh_days` of newer labelled data
have been harvested and no challenger is in shadow.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.atomic import file_lock
from loopline.config import AlertParams, Params, load_params
from loopline.evidence import row_errors
from loopline.features import encode_features, encode_target
from loopline.metrics import primary_metric
from loopline.paths import ProjectPaths
from loopline.registry import REFERENCE_FILE, TEST_ROWS_FILE, Registry, Version
from loopline.runtime import onnx_session, predict_frame
from loopline.schema import FeatureSchema
from monitoring.alerts import Delivery, Outbox, SmtpSettings, compose
from monitoring.decide import (
    Decision,
    Harm,
    ShadowVerdict,
    estimate_errors,
    input_problems,
    judge_challenger,
    judge_harm,
    judge_level,
    judge_previous,
    permutation_importance,
    retrain_due,
)
from monitoring.drift import (
    WindowCheck,
    add_to_workspace,
    check_window,
    drift_from_recent,
    reference_frame,
    save_check,
)
from monitoring.window import day_files, served_window
from serving.request_log import SHADOW_PREFIX, missing_matrix, read_log_files

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: WindowCheck
    files: dict[str, Path]
    actions: list[dict[str, Any]] = field(default_factory=list)
    """What the check did: promoted, rolled back, retired a challenger, released the watched model."""
    alerts: list[str] = field(default_factory=list)
    """Subjects of the emails queued."""
    alert_kinds: list[str] = field(default_factory=list)
    """Their kinds: harm, input, escalation (incidents); promoted, rolled back (decisions)."""
    retrain: str | None = None
    """Why to train a candidate now ("harm", "refresh"), or None."""
    delivery: Delivery = field(default_factory=Delivery)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.result.verdict,
            "summary": self.result.summary(),
            "decision": self.result.decision,
            "actions": self.actions,
            "alerted": bool(self.alerts),
            "alerts": self.alerts,
            "alert_kinds": self.alert_kinds,
            "retrain": self.retrain,
            "files": {k: str(v) for k, v in self.files.items()},
            "sent": [str(p) for p in self.delivery.sent],
            "written": [str(p) for p in self.delivery.written],
            "pending": [str(p) for p in self.delivery.pending],
        }


# ---------------------------------------------------------------------------------- loop state
class LoopState:
    """What the loop remembers between checks, in one JSON file under a file lock: open incidents (their
    severity and when they alerted), how many checks each shadow model has been judged in, and how many
    candidates in a row failed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        with file_lock(self.path.with_suffix(".lock")):
            state = json.loads(self.path.read_text()) if self.path.is_file() else {}
            state.setdefault("incidents", {})
            state.setdefault("shadow_windows", {})
            state.setdefault("failed_candidates", 0)
            yield state
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2, default=str))
            tmp.replace(self.path)

    def read(self) -> dict[str, Any]:
        with self.update() as state:
            return dict(state)


def should_alert(incidents: dict[str, Any], key: str, level: int, now: datetime, remind: timedelta) -> bool:
    """Open or update incident `key` at `level` (> 0); True when it is new, got worse, or is due a
    reminder. The caller closes incidents that are no longer present (`close_incidents`)."""
    open_ = incidents.get(key)
    if open_ is None:
        incidents[key] = {
            "level": level,
            "opened": now.isoformat(),
            "alerted_level": level,
            "last_alert": now.isoformat(),
        }
        return True
    open_["level"] = level
    if level > open_["alerted_level"] or now - datetime.fromisoformat(open_["last_alert"]) >= remind:
        open_["alerted_level"], open_["last_alert"] = max(level, open_["alerted_level"]), now.isoformat()
        return True
    return False


def close_incidents(incidents: dict[str, Any], prefix: str, present: set[str]) -> list[str]:
    closed = [k for k in incidents if k.startswith(prefix) and k not in present]
    for key in closed:
        del incidents[key]
    return closed


# ---------------------------------------------------------------------------------- evidence
def logged_errors(schema: FeatureSchema, y: pd.Series, predictions: pd.Series) -> np.ndarray:
    """Per-row errors of logged predictions (values, or class labels for classification)."""
    if schema.task.is_classification:
        return (predictions.astype(str).to_numpy() != y.astype(str).to_numpy()).astype(np.float64)
    return np.abs(y.to_numpy(np.float64) - predictions.to_numpy(np.float64))


@dataclass
class ProductionModel:
    version: Version
    schema: FeatureSchema
    session: Any
    test: pd.DataFrame
    test_outputs: np.ndarray
    normal_errors: np.ndarray
    """Its per-row errors on its own test split: what is normal for it."""

    @classmethod
    def load(cls, version: Version) -> "ProductionModel":
        """Its judged outputs on its test rows (out of sample: with train.refit: all, the holdout
        network's) give its normal error."""
        from release.promote import test_outputs, version_schema

        schema = version_schema(version)
        session = onnx_session(version.model)
        test = pd.read_parquet(version.file(TEST_ROWS_FILE))
        outputs = test_outputs(version)
        errors = row_errors(schema.task.value, encode_target(test, schema), outputs)
        return cls(version, schema, session, test, outputs, errors)

    def known_until(self) -> pd.Timestamp | None:
        """The newest event time the served model learned from (release.promote.learned_until)."""
        from release.promote import learned_until

        return learned_until(self.version)


def _as_utc(values: pd.Series) -> pd.Series:
    values = pd.to_datetime(values)
    return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")


def judge_window_harm(window: pd.DataFrame, model: ProductionModel, params: Params) -> Harm:
    """From the labelled rows when enough arrived, else from the label-free estimate on all rows."""
    schema, monitor = model.schema, params.monitor
    metric = "MAE" if primary_metric(schema.task.value) == "mae" else "error rate"
    labelled = window[window[schema.target].notna()]
    if len(labelled) >= monitor.min_labelled_rows:
        errors = logged_errors(schema, labelled[schema.target], labelled["prediction"])
        return judge_harm(
            errors,
            model.normal_errors,
            monitor,
            blocks=labelled["request_id"].to_numpy(),
            metric=metric,
            seed=params.seed,
        )
    if window.empty:
        return Harm(0, None, None, metric)
    reference_inputs = _estimator_inputs(model.test, schema, model.test_outputs)
    window_outputs = predict_frame(model.session, window, schema)
    estimated = estimate_errors(
        schema.task.value,
        reference_inputs,
        model.normal_errors,
        _estimator_inputs(window, schema, window_outputs),
        window_outputs,
        params.seed,
    )
    return judge_harm(
        estimated,
        model.normal_errors,
        monitor,
        blocks=window["request_id"].to_numpy(),
        source="estimate",
        metric=metric,
        seed=params.seed,
    )


def _estimator_inputs(frame: pd.DataFrame, schema: FeatureSchema, outputs: np.ndarray) -> np.ndarray:
    enc = encode_features(frame, schema)
    out = np.asarray(outputs, dtype=np.float64).reshape(len(frame), -1)
    return np.hstack([enc.numeric.astype(np.float64), enc.categorical.astype(np.float64), out])


def judge_shadows(
    window: pd.DataFrame, model: ProductionModel, shadows: dict[str, str], windows: dict[str, int], params: Params
) -> list[ShadowVerdict]:
    """Each shadow model against production on the labelled rows both scored."""
    schema = model.schema
    verdicts = []
    for version, role in sorted(shadows.items()):
        column = SHADOW_PREFIX + version
        seen = windows.get(version, 0) + 1
        rows = window[window[schema.target].notna()]
        rows = rows[rows[column].notna()] if column in rows else rows.iloc[:0]
        theirs = logged_errors(schema, rows[schema.target], rows[column]) if len(rows) else np.array([])
        ours = logged_errors(schema, rows[schema.target], rows["prediction"]) if len(rows) else np.array([])
        blocks = rows["request_id"].to_numpy()
        judge = judge_challenger if role == "challenger" else judge_previous
        first, second = (theirs, ours) if role == "challenger" else (ours, theirs)
        verdicts.append(judge(version, first, second, params.promote, windows=seen, blocks=blocks, seed=params.seed))
    return verdicts


def window_period(window: pd.DataFrame, schema: FeatureSchema) -> tuple[str, str] | None:
    column = schema.time_column
    if column is None or column not in window or window[column].isna().all():
        return None
    times = _as_utc(window[column].dropna())
    return times.min().isoformat(), times.max().isoformat()


def refused_rows(paths: ProjectPaths, start: datetime, end: datetime) -> pd.DataFrame:
    frame = read_log_files(day_files(paths.refused_log_dir, start, end))
    if frame.empty:
        return pd.DataFrame(columns=["refused_at", "columns", "problem"])
    at = _as_utc(frame["refused_at"])
    return frame[(at >= pd.Timestamp(start)) & (at < pd.Timestamp(end))].reset_index(drop=True)


# ---------------------------------------------------------------------------------- the check
def run_check(
    paths: ProjectPaths,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
    *,
    can_retrain: bool = False,
    act: bool = True,
) -> Outcome:
    """Check the traffic served in [start, end). `now` is the time incidents are reckoned in (the wall
    clock unless a replay says otherwise). `can_retrain`: the caller (the monitoring flow) starts training
    when the outcome says `retrain`. `act`: promote, roll back and retire shadow models as decided."""
    params = load_params(paths.params)
    now = now or datetime.now(timezone.utc)
    registry = Registry.for_project(paths.root)
    version = registry.production()
    if version is None:
        raise RuntimeError(f"no production model in {registry.root}: nothing is served, nothing to monitor")
    model = ProductionModel.load(registry.get(version))
    schema = model.schema
    everything = served_window(paths.request_log_dir, paths.ground_truth_dir, schema, start, end)
    window = everything[everything["model_version"].astype(str) == version].reset_index(drop=True)
    training = pd.read_parquet(model.version.file(REFERENCE_FILE))
    reference = reference_frame(training, schema, predict_frame(model.session, training, schema), seed=params.seed)
    result, snapshots = check_window(
        window, reference, schema, params.monitor, model_version=version, window_start=start, window_end=end
    )
    result.event_times = window_period(window, schema)
    previous = served_window(paths.request_log_dir, paths.ground_truth_dir, schema, start - (end - start), start)
    result.recent = drift_from_recent(window, previous, schema)
    refused = refused_rows(paths, start, end)
    inputs = input_problems(
        window,
        missing_matrix(window, schema),
        training,
        refused,
        int(everything["request_id"].nunique()) if len(everything) else 0,
        schema,
        params.monitor,
    )
    state_file = LoopState(paths.incidents)
    shadows = registry.shadows()
    with state_file.update() as state:
        windows = state["shadow_windows"]
        verdicts = judge_shadows(window, model, shadows, windows, params) if len(window) else []
        harm = Harm(0, None, None)
        if len(window) >= params.monitor.min_rows:
            harm = judge_window_harm(window, model, params)
            if result.drift_share is not None:
                result.importance = permutation_importance(
                    lambda f: predict_frame(model.session, f, schema),
                    reference,
                    schema,
                    encode_target(reference, schema),
                    params.seed,
                )
        decision = Decision(harm, inputs, verdicts)
        result.decision = decision.to_dict()
        result.verdict = verdict(result, decision)
        outcome = Outcome(result, {})
        alerts = plan_alerts(state, decision, now, params)
        if act:
            outcome.actions = act_on_shadows(paths, registry, verdicts, state, harm)
            if params.monitor.recalibrate.enabled and not inputs:
                outcome.actions += recalibrate(registry, window, version, result, params)
        for v in verdicts:
            if v.version in registry.shadows():
                windows[v.version] = v.windows
        for gone in set(windows) - set(registry.shadows()):
            del windows[gone]
        outcome.retrain = retrain_reason(params, decision, alerts, model, window, can_retrain)
        if any(a["kind"] == "escalation" for a in alerts):
            state["escalated"] = now.isoformat()
    files = save_check(result, snapshots, paths.monitoring_dir / f"{end:%Y%m%dT%H%M%S}")
    outcome.files = files
    add_to_workspace(snapshots, paths.evidently_workspace)
    log.info("monitoring %s: %s", version, result.summary())
    attachments = [p for k, p in files.items() if k != "summary"] + [files["summary"]]
    for alert in alerts + [action_alert(a, result) for a in outcome.actions if a.get("email")]:
        subject, body = compose_alert(alert, result, decision, outcome, params)
        queue_alert(paths, params.monitor.alerts, subject, body, attachments)
        outcome.alerts.append(subject)
        outcome.alert_kinds.append(alert["kind"])
    outcome.delivery = deliver(paths, params.monitor.alerts)
    return outcome


def verdict(result: WindowCheck, decision: Decision) -> str:
    if result.verdict == "insufficient data" and not decision.inputs:
        return "insufficient data"
    if result.verdict == "insufficient data":
        return "input problem"
    words = decision.harm.name if decision.harm.source else "normal"
    return f"{words} and input problem" if decision.inputs else words


def plan_alerts(state: dict[str, Any], decision: Decision, now: datetime, params: Params) -> list[dict[str, Any]]:
    """The incidents to email about now: harm that is new or worse (or due a reminder), input problems
    per column, an escalation when production stays degraded while candidates keep failing."""
    incidents, remind = state["incidents"], timedelta(hours=params.monitor.alerts.remind_hours)
    alerts: list[dict[str, Any]] = []
    harm = decision.harm
    if harm.source is not None:
        if harm.level > 0:
            if should_alert(incidents, "harm", harm.level, now, remind):
                alerts.append({"kind": "harm"})
        else:
            close_incidents(incidents, "harm", set())
    present = {f"input:{p.kind}:{p.column}" for p in decision.inputs}
    new = [p for p in decision.inputs if should_alert(incidents, f"input:{p.kind}:{p.column}", 1, now, remind)]
    close_incidents(incidents, "input:", present)
    if new:
        alerts.append({"kind": "input", "problems": new})
    failed = state["failed_candidates"] + sum(v.decision == "retire" for v in decision.shadows)
    state["failed_candidates"] = 0 if any(v.decision == "promote" for v in decision.shadows) else failed
    if harm.level > 0 and failed >= params.promote.escalate_after and not any(a["kind"] == "harm" for a in alerts):
        last = state.get("escalated")
        if last is None or now - datetime.fromisoformat(last) >= remind:
            alerts.append({"kind": "escalation", "failed": failed})
    return alerts


def act_on_shadows(
    paths: ProjectPaths, registry: Registry, verdicts: list[ShadowVerdict], state: dict[str, Any], harm: Harm
) -> list[dict[str, Any]]:
    """Carry out the shadow verdicts: at most one rollback or promotion, then retire and release."""
    from release.promote import PromotionRefused, end_shadow, promote, rollback

    actions: list[dict[str, Any]] = []
    rollbacks = [v for v in verdicts if v.decision == "rollback"]
    promotions = sorted((v for v in verdicts if v.decision == "promote"), key=lambda v: v.comparison.change)
    if rollbacks:
        v = rollbacks[0]
        old, new = rollback(paths, registry, f"live evidence: {v.reason}")
        actions.append({"action": "rolled back", "from": old, "to": new, "evidence": v.to_dict(), "email": True})
    elif promotions:
        v = promotions[0]
        try:
            done = promote(paths, registry, v.version, live=v.to_dict(), watch_previous=True)
        except PromotionRefused as exc:
            end_shadow(registry, v.version, {"reason": f"promotion refused: {exc}"})
            actions.append({"action": "retired", "version": v.version, "reason": str(exc), "email": False})
        else:
            actions.append(
                {
                    "action": "promoted",
                    "version": v.version,
                    "previous": done.get("previous"),
                    "evidence": v.to_dict(),
                    "recalibration": registry.get(v.version).metadata.get("recalibration"),
                    "email": True,
                }
            )
    for v in verdicts:
        if v.decision in ("retire", "release") or (v.decision == "promote" and promotions and v is not promotions[0]):
            if v.version in registry.shadows():
                end_shadow(registry, v.version, {"reason": v.reason})
                actions.append(
                    {
                        "action": "retired" if v.role == "challenger" else "released",
                        "version": v.version,
                        "reason": v.reason,
                        "email": False,
                    }
                )
    return actions


def recalibrate(
    registry: Registry, window: pd.DataFrame, served_by: str, result: WindowCheck, params: Params
) -> list[dict[str, Any]]:
    """When the labelled window shows a level shift of production's predictions (monitoring.decide.
    judge_level; production's own, or its shadow predictions when a promotion or rollback just changed
    it), register production with its output moved by it (release.recalibrate) and score it in shadow as
    a challenger, in place of an older level correction."""
    from release.promote import end_shadow, start_shadow, version_schema
    from release.recalibrate import is_recalibration, output_transform, register_recalibration

    current = registry.production()
    column = "prediction" if current == served_by else SHADOW_PREFIX + str(current)
    version = registry.get(str(current))
    schema = version_schema(version)
    if column not in window or schema.target not in window:
        return []
    rows = window[window[schema.target].notna() & window[column].notna()]
    if len(rows) < params.monitor.min_labelled_rows:
        return []
    shape = output_transform(version, schema)
    if shape is None:
        return []
    times = rows[schema.time_column] if schema.time_column and rows[schema.time_column].notna().all() else None
    days = _as_utc(times if times is not None else rows["served_at"]).dt.date.to_numpy()
    level = judge_level(
        rows[schema.target].to_numpy(np.float64),
        rows[column].to_numpy(np.float64),
        shape[0],
        shape[1],
        params.monitor.recalibrate,
        blocks=days,
    )
    if level is None or not level.act:
        return []
    corrected = register_recalibration(registry, version, schema, level.to_dict(), {"period": result.period})
    if corrected.id in registry.shadows():
        return []
    start_shadow(registry, corrected.id, "challenger", {"reason": f"level correction of {current}: {level.describe()}"})
    for older, role in registry.shadows().items():
        if role == "challenger" and older != corrected.id and is_recalibration(registry.get(older)):
            end_shadow(registry, older, {"reason": f"superseded by the level correction {corrected.id}"})
    return [
        {
            "action": "recalibrated",
            "version": corrected.id,
            "parent": current,
            "level": level.to_dict(),
            "reason": level.describe(),
            "email": False,
        }
    ]


def retrain_reason(
    params: Params,
    decision: Decision,
    alerts: list[dict[str, Any]],
    model: ProductionModel,
    window: pd.DataFrame,
    can_retrain: bool,
) -> str | None:
    """monitoring.decide.retrain_due on this window: the newest labelled event time (the served time
    without one) against what production learned (its registration time without a time column)."""
    if not (can_retrain and params.monitor.retrain):
        return None
    labelled = window[window[model.schema.target].notna()]
    column = model.schema.time_column
    newest = known = None
    if not labelled.empty:
        if column is not None and labelled[column].notna().any():
            newest, known = _as_utc(labelled[column].dropna()).max(), model.known_until()
        else:
            newest, known = _as_utc(labelled["served_at"]).max(), pd.Timestamp(model.version.metadata["registered_at"])
        known = None if known is None else (known.tz_localize("UTC") if known.tzinfo is None else known)
    return retrain_due(
        any(a["kind"] == "harm" for a in alerts), bool(decision.inputs), newest, known, params.monitor.refresh_days
    )


# ---------------------------------------------------------------------------------- emails
def action_alert(action: dict[str, Any], result: WindowCheck) -> dict[str, Any]:
    return {"kind": action["action"], "action": action}


def _pct(c: dict[str, Any]) -> str:
    return f"{c['change']:+.0%} ({c['confidence']:.0%} interval {c['low']:+.0%} to {c['high']:+.0%}, {c['rows']} rows)"


def compose_alert(
    alert: dict[str, Any], result: WindowCheck, decision: Decision, outcome: Outcome, params: Params
) -> tuple[str, str]:
    """Subject and body: what happened on which days, the numbers rounded, the challenger against
    production on the same recent traffic, drift as context, and one line of what to do."""
    version = result.model_version[:8]
    harm = decision.harm
    c = harm.comparison.to_dict() if harm.comparison else None
    kind = alert["kind"]
    lines: list[str] = []
    if kind == "harm":
        subject = f"model {version} {harm.name}: {harm.metric} {c['change']:+.0%} over normal, {result.period}"
        source = "measured on labelled records" if harm.source == "labels" else "estimated before labels arrived"
        lines.append(
            f"The production model {version} is {harm.name} in the traffic of {result.period}: "
            f"{harm.metric} {c['error']:.3g} against its normal {c['reference_error']:.3g} (its test split), "
            f"{_pct(c)}, {source}."
        )
        if decision.inputs:
            todo = "An input problem is open (its own email names the columns): fix it first; no retraining starts while it lasts."
        elif outcome.retrain:
            todo = (
                "Nothing yet: a new candidate is being trained on the newest data, and it replaces the model only "
                "after it beats it on live traffic in shadow. An escalation follows if candidates keep failing."
            )
        else:
            todo = "Train a candidate (`loopline train`); it is scored in shadow before it can replace the model."
        corrected = next((a for a in outcome.actions if a["action"] == "recalibrated"), None)
        if corrected and not decision.inputs:
            rest = todo.removeprefix("Nothing yet: ")
            todo = (
                f"Nothing yet: the true values sit {corrected['level']['change']:+.0%} against the predictions, so "
                f"production with its output moved by that much ({corrected['version'][:8]}) is in shadow and "
                "replaces it at the next check if it does better on the labelled records; "
                + (rest[0].lower() + rest[1:] if rest != todo else todo)
            )
    elif kind == "input":
        names = ", ".join(f"`{p.column}`" for p in alert["problems"] if p.column) or "requests"
        subject = f"input problem in {names}, {result.period}"
        lines.append(f"The input contract was broken in the traffic of {result.period}:")
        lines += [f"  - {p.describe()}" for p in alert["problems"]]
        todo = (
            "Fix the client or the data feed that sends these columns (a retraining cannot fix an input bug, so "
            "none was started); the model keeps serving the records that pass validation."
        )
    elif kind == "escalation":
        subject = f"model {version} still {harm.name}; {alert['failed']} candidates in a row failed"
        lines.append(
            f"The production model {version} is still {harm.name} ({harm.metric} {_pct(c)}) and the last "
            f"{alert['failed']} candidates failed to beat it on live traffic or the gate."
        )
        todo = (
            "Look for an input problem first; then either widen the training window (prepare.window in "
            "params.yaml), or promote a candidate by hand with a reason: "
            "`loopline promote <version> --force --reason '...'`."
        )
    else:
        action = alert["action"]
        ev = action["evidence"]["comparison"]
        if kind == "promoted":
            subject = f"promoted {action['version'][:8]}: {ev['change']:+.0%} error against {version} on live traffic"
            fix = action.get("recalibration")
            what = (
                f"The level correction {action['version'][:8]} ({fix['parent'][:8]} with its output moved by "
                f"{fix['change']:+.0%}, measured on {fix['window'].get('period')})"
                if fix
                else f"Candidate {action['version'][:8]}"
            )
            lines.append(
                f"{what} was promoted: in shadow, on the labelled live records of "
                f"{result.period}, its {harm.metric or 'error'} was {ev['error']:.3g} against production's "
                f"{ev['reference_error']:.3g}: {_pct(ev)}."
            )
            todo = "Nothing: the replaced model stays in shadow for a check and comes back if the new one does worse."
        else:
            subject = f"rolled back {action['from'][:8]} to {action['to'][:8]}: worse on live traffic"
            lines.append(
                f"The model promoted lately, {action['from'][:8]}, did worse than the one it replaced on the same "
                f"labelled live records of {result.period}: {_pct(ev)}. Production is {action['to'][:8]} again."
            )
            todo = "Nothing urgent; look at the candidate's report before training again with the same settings."
    challenger = [v for v in decision.shadows if v.role == "challenger" and v.comparison is not None]
    if challenger and kind not in ("promoted",):
        v = challenger[0]
        verdict_words = {"promote": "promoted", "retire": "retired", "wait": "kept in shadow"}[v.decision]
        lines.append(
            f"Challenger {v.version[:8]} against production on the same labelled records: "
            f"{_pct(v.comparison.to_dict())} error; {verdict_words}."
        )
    if result.drift_share is not None:
        top = sorted(result.drifted, key=lambda col: -result.importance.get(col.column, 0.0))[:5]
        named = ", ".join(f"{col.column} ({result.importance.get(col.column, 0.0):.0%} of importance)" for col in top)
        lines.append(
            f"Drift, as context: {len(result.drifted)} of {len(result.columns)} columns drifted from the training "
            f"data, {result.weighted_drift_share:.0%} of the model's importance{': ' + named if named else ''}."
        )
    moved = [c.column for c in result.recent if c.drifted]
    if result.recent:
        lines.append(
            f"Against the traffic of the window before: {len(moved)} of {len(result.recent)} features moved"
            + (f" ({', '.join(moved)})." if moved else ".")
        )
    if outcome.actions and kind in ("harm", "input", "escalation"):
        lines.append("This check also: " + "; ".join(_describe_action(a) for a in outcome.actions) + ".")
    lines += ["", f"What to do: {todo}", "", "The Evidently reports and the JSON summary are attached."]
    return subject, "\n".join(lines)


def _describe_action(action: dict[str, Any]) -> str:
    if action["action"] == "rolled back":
        return f"rolled back {action['from'][:8]} to {action['to'][:8]}"
    if action["action"] == "recalibrated":
        level = action["level"]
        return (
            f"put {action['version'][:8]} in shadow: {action['parent'][:8]} with its output moved by "
            f"{level['change']:+.0%}, measured on {level['rows']} labelled rows over {level['days']} days "
            f"(interval {level['low']:+.0%} to {level['high']:+.0%})"
        )
    return f"{action['action']} {action['version'][:8]}"


def alert_params(paths: ProjectPaths) -> AlertParams:
    """`monitor.alerts` from params.yaml, even when another section is invalid (a failure to report may
    be exactly that); the defaults if the section itself cannot be read."""
    import yaml

    from loopline.config import MonitorParams

    try:
        raw = yaml.safe_load(paths.params.read_text()) or {}
        return MonitorParams.model_validate(raw.get("monitor") or {}).alerts
    except Exception:
        log.warning("params.yaml: monitor.alerts unreadable; alerting with the defaults", exc_info=True)
        return AlertParams()


def queue_alert(
    paths: ProjectPaths, alerts: AlertParams, subject: str, body: str, attachments: list[Path] = ()
) -> Path:
    return Outbox.for_project(paths.root).put(compose(subject, body, alerts, list(attachments)))


def deliver(paths: ProjectPaths, alerts: AlertParams) -> Delivery:
    """Send what the outbox holds (or write it as .eml without SMTP) and say where it went."""
    delivery = Outbox.for_project(paths.root).deliver(SmtpSettings.from_env(), alerts.retry_seconds)
    for path in delivery.written:
        print(f"alert written (no SMTP configured): {path}")
    for path in delivery.pending:
        print(f"alert not delivered yet, kept in the outbox: {path}")
    return delivery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, help="window length (default: monitor.window_hours)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.here()
    end = datetime.now(timezone.utc)
    hours = args.hours or load_params(paths.params).monitor.window_hours
    outcome = run_check(paths, end - timedelta(hours=hours), end)
    print(json.dumps(outcome.to_dict(), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
