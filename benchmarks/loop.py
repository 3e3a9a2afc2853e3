"""The loop's decisions against plain schedules, on replays of the bundled bike data.

Every policy serves the same weeks of real hourly rows after a first model trained on what was known
until --train-until; labels arrive --label-delay-days late; a retraining learns every labelled row known
at that moment (the initial rows plus the served weeks), with the project's params.yaml (train.refit,
the training window) through the pipeline's own functions (dataprep.prepare.prepare, models.train.fit),
in process, so that the four policies share their trainings:

- frozen: the first model serves throughout.
- weekly-always: a candidate trained at every week's end replaces production at once.
- weekly-gated: the same candidate replaces production when it passes the gate (release.gate.judge on
  the candidate's test split against that schedule's production model).
- loop: what the monitoring check decides (monitoring.decide): harm alerts from the production model's
  error against its normal error; a candidate trained on a refresh or on harm, gated, then scored in
  shadow for a week and promoted only when it beats production on the same labelled live rows; a level
  correction of production (its output moved by the labelled week's steady factor, as
  release.recalibrate does to the ONNX file) in shadow beside it on the same terms; the replaced model
  watched for a rollback; input problems named, without retraining or correction.

Scenarios (--scenario, default all):
- policies: the four policies over --weeks weeks (or 2011-07 to the end of 2012 with --full): MAE,
  weeks with an alert, trainings, promotions, and the longest run of weeks one model served while
  degraded (its harm level >= 1 on the week's labels).
- own-data: the first model's own training and test weeks replayed as traffic: alerts expected 0.
- unit-change: from week 3 a client sends `hum` as a fraction (passes validation): named in the first
  window, and no retraining while it lasts.
- refused: from week 3 a client sends `temp` in Fahrenheit: requests with a value above the schema's
  maximum are answered 400; the refused share names `temp` in the first window.
- label-shift: from week 4 every true count is 1.5x (the world changed): how many weekly checks until
  a model fitted on shifted labels (a retraining or a level correction) serves.

    .venv/bin/python benchmarks/loop.py [--full] [--scenario policies] [--weeks 12] [--json FILE]

Wall time here (2 cores): about 100 s for the 12-week policies and scenarios, 5 minutes for --full policies.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dataprep.prepare import prepare  # noqa: E402
from dataprep.sources import load_bike  # noqa: E402
from loopline.config import Params, load_params  # noqa: E402
from loopline.evidence import compare_paired, row_errors  # noqa: E402
from loopline.features import encode_target  # noqa: E402
from loopline.request_model import describe_errors, record_model  # noqa: E402
from loopline.schema import FeatureSchema, load_schema  # noqa: E402
from models.baselines import fit_baselines  # noqa: E402
from models.evaluate import evaluate  # noqa: E402
from models.torch_predict import predict  # noqa: E402
from models.train import PreparedSplits, fit, split_weights  # noqa: E402
from monitoring.check import plan_alerts  # noqa: E402
from monitoring.decide import (  # noqa: E402
    Decision,
    Level,
    input_problems,
    judge_challenger,
    judge_harm,
    judge_level,
    judge_previous,
    retrain_due,
)
from release.gate import Evidence, judge  # noqa: E402
from release.promote import paired_comparisons, shared_rows  # noqa: E402

DAY = pd.Timedelta(days=1)
WEEK = pd.Timedelta(days=7)


# ------------------------------------------------------------------------------------------ models
@dataclass
class Model:
    name: str
    net: Any
    until: pd.Timestamp
    """It learned the labelled rows before this time."""
    learned_until: pd.Timestamp
    test: pd.DataFrame
    test_outputs: np.ndarray
    """The judged network's outputs on the test rows (the holdout network with train.refit: all)."""
    evaluation: Any
    baselines: dict[str, dict[str, float]]
    refit_on: str
    recalibrated_from: str | None = None

    def predict(self, rows: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
        return predict(self.net, rows, schema)

    def normal_errors(self, schema: FeatureSchema) -> np.ndarray:
        return row_errors(schema.task.value, encode_target(self.test, schema), self.test_outputs)

    def level(self, rows: pd.DataFrame, schema: FeatureSchema, params: Params) -> Level | None:
        """monitoring.decide.judge_level on labelled rows, per day."""
        return judge_level(
            rows[schema.target].to_numpy(),
            self.predict(rows, schema),
            self.net.spec.target_transform,
            float(next(b for n, b in self.net.named_buffers() if n.endswith("target_scale"))),
            params.monitor.recalibrate,
            blocks=rows[schema.time_column].dt.date.to_numpy(),
        )

    def recalibrated(self, level: Level, at: pd.Timestamp) -> Model:
        """This network with its output shifted by the level (as release.recalibrate does to the ONNX
        file); its judged outputs stay the network's own, as in the registry."""
        net = copy.deepcopy(self.net)
        with torch.no_grad():
            for name, buffer in net.named_buffers():
                if name.endswith("target_shift"):
                    buffer += level.offset
        return replace(self, name=f"{self.name}~{level.change:+.0%}", net=net, until=at, recalibrated_from=self.name)


class Trainer:
    """Trains on the labelled rows known before a time, once per time (the policies share them)."""

    def __init__(self, schema: FeatureSchema, params: Params) -> None:
        self.schema, self.params, self.cache = schema, params, {}
        self.seconds = 0.0

    def train(self, known: pd.DataFrame, until: pd.Timestamp, key: Any) -> Model:
        if key in self.cache:
            return self.cache[key]
        clock = time.perf_counter()
        prepared = prepare(known, self.schema, self.params)
        data = PreparedSplits(prepared.schema, prepared.stats, prepared.splits, split_weights(prepared.rows))
        fitted = fit(data, self.params, run_checks=False, find_lr=False)
        net = fitted.model.eval()
        judged = (fitted.holdout or fitted.model).eval()
        test = prepared.splits["test"]
        outputs = predict(judged, test, prepared.schema)
        baselines = {
            name: b.predict(test, prepared.schema)
            for name, b in fit_baselines(prepared.splits["train"], prepared.schema, self.params.seed).items()
        }
        evaluation = evaluate(outputs, baselines, test, prepared.schema, self.params.evaluate)
        times = pd.to_datetime(test[self.schema.time_column])
        learned = times.max() if fitted.holdout is not None else times.min()
        model = Model(
            f"m{len(self.cache)}",
            net,
            until,
            learned,
            test,
            outputs,
            evaluation,
            {k: v for k, v in evaluation.metrics.items() if k != "model"},
            self.params.train.refit,
        )
        self.cache[key] = model
        self.seconds += time.perf_counter() - clock
        return model


def gate(candidate: Model, champion: Model | None, schema: FeatureSchema, params: Params) -> bool:
    """release.gate.judge on evidence gathered in process (the recipe checks and export parity, which
    need the pipeline's files, count as passed: the candidates come from the same recipe)."""
    ev = Evidence(
        metrics=candidate.evaluation.metrics["model"],
        slices=candidate.evaluation.slices,
        baselines=candidate.baselines,
        checks=[{"name": "recipe", "passed": True, "skipped": False}],
        parity={"passed": True, "onnx_sha256": "in-process"},
        onnx_sha256="in-process",
    )
    if champion is not None:  # as release.promote.champion_outputs does with the registry's files
        ev.champion = champion.name
        if candidate.refit_on == "all":  # its judged outputs are its holdout network's: so are the champion's
            shared, theirs = shared_rows(candidate.test, champion.test, champion.test_outputs, schema)
        else:
            shared = (pd.to_datetime(candidate.test[schema.time_column]) > champion.learned_until).to_numpy()
            theirs = champion.predict(candidate.test[shared], schema)
        ev.champion_rows = int(shared.sum())
        if shared.any():
            rows = candidate.test[shared]
            ev.champion_comparisons = paired_comparisons(
                candidate.test_outputs[shared],
                theirs,
                rows,
                schema,
                list(candidate.evaluation.slices),
                params.evaluate.min_slice_rows,
                params.gate.champion_confidence,
            )
    return judge(params.gate, ev).passed


# ------------------------------------------------------------------------------------------ replay
@dataclass
class Client:
    """What the client sends: the rows as they are, or with an input problem from a week on."""

    problem: str | None = None
    from_week: int = 10**9

    def send(self, rows: pd.DataFrame, week: int) -> pd.DataFrame:
        if week < self.from_week or self.problem is None:
            return rows
        if self.problem == "hum-fraction":
            return rows.assign(hum=rows["hum"] / 100)
        if self.problem == "temp-fahrenheit":
            return rows.assign(temp=rows["temp"] * 1.8 + 32)
        return rows


@dataclass
class Week:
    index: int
    start: pd.Timestamp
    mae: dict[str, float] = field(default_factory=dict)
    served: dict[str, str] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    harm_level: int = 0
    inputs: list[str] = field(default_factory=list)


@dataclass
class Replay:
    schema: FeatureSchema
    params: Params
    data: pd.DataFrame
    begin: pd.Timestamp
    end: pd.Timestamp
    label_delay: pd.Timedelta
    client: Client = field(default_factory=Client)
    label_factor: float = 1.0
    shift_from: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        self.truth = self.data.copy()
        if self.shift_from is not None:
            shifted = self.truth["timestamp"] >= self.shift_from
            self.truth.loc[shifted, "cnt"] = (self.truth.loc[shifted, "cnt"] * self.label_factor).round()
        self.starts = list(pd.date_range(self.begin, self.end - WEEK, freq="7D"))
        self.trainer = Trainer(self.schema, self.params)
        self.recalibrations: list[Model] = []
        self.record = record_model(self.schema)

    def rows(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        t = self.truth["timestamp"]
        return self.truth[(t >= start) & (t < end)].reset_index(drop=True)

    def known(self, at: pd.Timestamp, sent: dict[int, pd.DataFrame]) -> pd.DataFrame:
        """What a retraining at `at` learns: the initial rows, and the served rows whose labels arrived,
        with the features as the client sent them (the harvest keeps what was served)."""
        initial = self.truth[self.truth["timestamp"] < self.begin]
        served = [s[s["timestamp"] < at - self.label_delay] for s in sent.values()]
        return pd.concat([initial, *served], ignore_index=True)

    def train(self, at: pd.Timestamp, sent: dict[int, pd.DataFrame]) -> Model:
        known = self.known(at, sent)
        return self.trainer.train(known, at, (at, self.client.problem, self.label_factor))

    def validate(self, day: pd.DataFrame) -> list[str] | None:
        """The fields a request of this day's records would be refused for (400), or None when served."""
        features = [c.name for c in self.schema.features]
        problems = []
        for i, record in enumerate(day[features].to_dict("records")):
            try:
                self.record.model_validate({k: (None if pd.isna(v) else v) for k, v in record.items()})
            except Exception as exc:  # pydantic's ValidationError
                problems += [
                    {"field": f"records[{i}].{p['field']}", "problem": p["problem"]} for p in describe_errors(exc)
                ]
        return [p["field"].split(".", 1)[1] for p in problems] or None


def run_policies(replay: Replay, policies: list[str]) -> tuple[list[Week], dict[str, Any]]:
    schema, params = replay.schema, replay.params
    first = replay.train(replay.begin, {})
    production = {p: first for p in policies}
    counts = {p: {"trainings": 0, "promotions": 0, "rollbacks": 0} for p in policies}
    shadows: dict[str, tuple[Model, str, int]] = {}  # the loop's: name -> (model, role, checks)
    state: dict[str, Any] = {"incidents": {}, "shadow_windows": {}, "failed_candidates": 0}
    sent: dict[int, pd.DataFrame] = {}
    weeks: list[Week] = []
    degraded_run: dict[str, int] = {}
    longest = {p: 0 for p in policies}
    for index, start in enumerate(replay.starts):
        week = Week(index, start)
        truth = replay.rows(start, start + WEEK)
        days = [d for _, d in truth.groupby(truth["timestamp"].dt.date)]
        served_days, refused = [], []
        for day in days:
            shown = replay.client.send(day, index)
            fields = replay.validate(shown)
            if fields is None:
                served_days.append(shown)
            else:
                refused.append(
                    {
                        "refused_at": day["timestamp"].iloc[0],
                        "columns": ",".join(sorted(set(fields))),
                        "problem": "invalid",
                    }
                )
        served = pd.concat(served_days, ignore_index=True) if served_days else truth.iloc[:0]
        sent[index] = served
        check_at = start + WEEK
        labelled = served[served["timestamp"] < check_at - replay.label_delay]
        for p in policies:
            model = production[p]
            week.served[p] = model.name
            week.mae[p] = (
                float(np.mean(np.abs(model.predict(served, schema) - served["cnt"]))) if len(served) else np.nan
            )
        # --- the loop's check
        if "loop" in policies:
            model = production["loop"]
            y = labelled["cnt"].to_numpy()
            blocks = labelled["timestamp"].dt.date.to_numpy()
            harm = (
                judge_harm(
                    row_errors("regression", y, model.predict(labelled, schema)),
                    model.normal_errors(schema),
                    params.monitor,
                    blocks=blocks,
                    metric="mae",
                )
                if len(labelled) >= params.monitor.min_labelled_rows
                else judge_harm(np.array([]), np.array([]), params.monitor)
            )
            missing = served[[c.name for c in schema.features]].isna()
            problems = input_problems(
                served.assign(served_at=served["timestamp"]),
                missing,
                replay.truth[replay.truth["timestamp"] < replay.begin],
                pd.DataFrame(refused, columns=["refused_at", "columns", "problem"]),
                len(served_days),
                schema,
                params.monitor,
                time_column="timestamp",
            )
            verdicts = []
            for name, (shadow, role, checks) in shadows.items():
                theirs = row_errors("regression", y, shadow.predict(labelled, schema))
                ours = row_errors("regression", y, model.predict(labelled, schema))
                if role == "challenger":
                    verdicts.append(
                        judge_challenger(name, theirs, ours, params.promote, windows=checks + 1, blocks=blocks)
                    )
                else:
                    verdicts.append(
                        judge_previous(name, ours, theirs, params.promote, windows=checks + 1, blocks=blocks)
                    )
            decision = Decision(harm, problems, verdicts)
            now = check_at.tz_localize("UTC").to_pydatetime()
            alerts = plan_alerts(state, decision, now, params)
            week.harm_level, week.inputs = harm.level, [f"{p.kind}:{p.column}" for p in problems]
            week.alerts = [a["kind"] for a in alerts]
            rollback = next((v for v in verdicts if v.decision == "rollback"), None)
            promotions = sorted((v for v in verdicts if v.decision == "promote"), key=lambda v: v.comparison.change)
            if rollback:
                production["loop"] = shadows.pop(rollback.version)[0]
                counts["loop"]["rollbacks"] += 1
                week.events.append(f"rolled back to {rollback.version}")
            elif promotions:
                winner = shadows.pop(promotions[0].version)[0]
                shadows = {k: v for k, v in shadows.items() if v[1] != "previous"}
                shadows[model.name] = (model, "previous", 0)
                production["loop"] = winner
                counts["loop"]["promotions"] += 1
                week.events.append(f"promoted {winner.name} ({promotions[0].comparison.change:+.0%})")
            for v in verdicts:
                if v.version in shadows:
                    if v.decision in ("retire", "release") or v.decision == "promote":
                        shadows.pop(v.version)
                    else:
                        shadows[v.version] = (shadows[v.version][0], shadows[v.version][1], v.windows)
            # A level shift: production with its output moved by it, in shadow as a challenger.
            level = (
                production["loop"].level(labelled, schema, params)
                if params.monitor.recalibrate.enabled
                and not problems
                and len(labelled) >= params.monitor.min_labelled_rows
                else None
            )
            if level is not None and level.act:
                recalibrated = production["loop"].recalibrated(level, check_at)
                replay.recalibrations.append(recalibrated)
                shadows = {k: v for k, v in shadows.items() if not (v[1] == "challenger" and v[0].recalibrated_from)}
                shadows[recalibrated.name] = (recalibrated, "challenger", 0)
                week.events.append(f"level {level.change:+.0%}: {recalibrated.name} in shadow")
            newest = labelled["timestamp"].max() if len(labelled) else None
            reason = retrain_due(
                "harm" in week.alerts,
                bool(problems),
                newest,
                production["loop"].learned_until,
                params.monitor.refresh_days,
            )
            if reason:
                candidate = replay.train(check_at, sent)
                counts["loop"]["trainings"] += 1
                if gate(candidate, production["loop"], schema, params):
                    shadows = {
                        k: v for k, v in shadows.items() if not (v[1] == "challenger" and not v[0].recalibrated_from)
                    }
                    shadows[candidate.name] = (candidate, "challenger", 0)
                    week.events.append(f"trained {candidate.name} ({reason}): shadow")
                else:
                    state["failed_candidates"] += 1
                    week.events.append(f"trained {candidate.name} ({reason}): rejected")
            # Weeks in a row one model served while degraded (harm on its own week's labels).
            same_model = bool(weeks) and weeks[-1].served["loop"] == week.served["loop"]
            run = (degraded_run.get("loop", 0) + 1 if same_model else 1) if harm.level > 0 else 0
            degraded_run["loop"] = run
            longest["loop"] = max(longest["loop"], run)
        # --- the schedules
        for p in ("weekly-always", "weekly-gated"):
            if p in policies:
                candidate = replay.train(check_at, sent)
                counts[p]["trainings"] += 1
                if p == "weekly-always" or gate(candidate, production[p], schema, params):
                    if candidate is not production[p]:
                        production[p] = candidate
                        counts[p]["promotions"] += 1
        weeks.append(week)
    summary = {}
    for p in policies:
        served = [w.mae[p] for w in weeks if not np.isnan(w.mae[p])]
        rows = [len(replay.rows(w.start, w.start + WEEK)) for w in weeks]
        summary[p] = {
            "mae": round(float(np.average([w.mae[p] for w in weeks], weights=rows)), 1) if served else None,
            **counts[p],
        }
    summary["loop_alert_weeks"] = (
        sum(bool(set(w.alerts) & {"harm", "input", "escalation"}) for w in weeks) if "loop" in policies else None
    )
    summary["loop_longest_degraded_weeks"] = longest.get("loop")
    summary["training_seconds"] = round(replay.trainer.seconds, 1)
    return weeks, summary


# ---------------------------------------------------------------------------------------- scenarios
def base_replay(args: argparse.Namespace, **kwargs: Any) -> Replay:
    params = load_params(REPO / "params.yaml")
    schema = load_schema(REPO / "schemas" / "bike.yaml")
    data = load_bike().sort_values("timestamp").reset_index(drop=True)
    begin = pd.Timestamp(args.train_until) + DAY
    end = pd.Timestamp("2013-01-01") if args.full else begin + args.weeks * WEEK
    return Replay(schema, params, data, begin, end, pd.Timedelta(days=args.label_delay_days), **kwargs)


def own_data(args: argparse.Namespace) -> dict[str, Any]:
    """The first model's training and test weeks as traffic, labelled: no alert expected."""
    replay = base_replay(args)
    model = replay.train(replay.begin, {})
    schema, params = replay.schema, replay.params
    known = replay.truth[replay.truth["timestamp"] < replay.begin]
    windows = [
        known[(known["timestamp"] >= s) & (known["timestamp"] < s + WEEK)]
        for s in pd.date_range(known["timestamp"].min().normalize(), replay.begin - WEEK, freq="7D")
    ]
    state: dict[str, Any] = {"incidents": {}, "shadow_windows": {}, "failed_candidates": 0}
    alerts, corrections = [], 0
    for rows in windows:
        y = rows["cnt"].to_numpy()
        harm = judge_harm(
            row_errors("regression", y, model.predict(rows, schema)),
            model.normal_errors(schema),
            params.monitor,
            blocks=rows["timestamp"].dt.date.to_numpy(),
            metric="mae",
        )
        problems = input_problems(
            rows.assign(served_at=rows["timestamp"]),
            rows[[c.name for c in schema.features]].isna(),
            known,
            pd.DataFrame(columns=["refused_at", "columns", "problem"]),
            7,
            schema,
            params.monitor,
            time_column="timestamp",
        )
        now = (rows["timestamp"].max() + DAY).tz_localize("UTC").to_pydatetime()
        alerts += plan_alerts(state, Decision(harm, problems, []), now, params)
        level = model.level(rows, schema, params)
        corrections += bool(level is not None and level.act)
    return {
        "windows": len(windows),
        "alerts": len(alerts),
        "kinds": sorted({a["kind"] for a in alerts}),
        "level corrections put in shadow": corrections,
    }


def input_scenario(args: argparse.Namespace, problem: str, column: str) -> dict[str, Any]:
    replay = base_replay(args, client=Client(problem, 3))
    replay.end = min(replay.end, replay.begin + 6 * WEEK)
    replay.starts = replay.starts[:6]
    weeks, summary = run_policies(replay, ["loop"])
    first = next((w.index for w in weeks if any(i.endswith(":" + column) for i in w.inputs)), None)
    trained_during = [e for w in weeks[3:] for e in w.events if e.startswith("trained")]
    corrected_during = [e for w in weeks[3:] for e in w.events if e.startswith("level")]
    return {
        "problem from week": 3,
        "named in week": first,
        "named as": sorted({i for w in weeks for i in w.inputs}),
        "trainings while it lasted": len(trained_during),
        "level corrections while it lasted": len(corrected_during),
    }


def label_shift(args: argparse.Namespace) -> dict[str, Any]:
    shift_week = 4
    begin = pd.Timestamp(args.train_until) + DAY
    replay = base_replay(args, label_factor=1.5, shift_from=begin + shift_week * WEEK)
    replay.starts = replay.starts[: shift_week + 5]
    weeks, summary = run_policies(replay, ["frozen", "loop"])
    knew_shift = {
        m.name
        for m in [*replay.trainer.cache.values(), *replay.recalibrations]
        if m.until > begin + shift_week * WEEK + replay.label_delay
    }
    trained_on_shift = next((w.index for w in weeks if w.served["loop"] in knew_shift), None)
    return {
        "retrained after one shifted week": recency_after_shift(replay, shift_week),
        "shift from week": shift_week,
        "first week served by a model trained on shifted labels": trained_on_shift,
        "weekly checks after the shift": None if trained_on_shift is None else trained_on_shift - shift_week,
        "weeks": [
            {
                "week": w.index,
                "mae": round(w.mae["loop"], 1),
                "frozen": round(w.mae["frozen"], 1),
                "alerts": w.alerts,
                "events": w.events,
            }
            for w in weeks
        ],
    }


def recency_after_shift(replay: Replay, shift_week: int) -> dict[str, str]:
    """What the best-placed retraining can do: candidates trained at the first check after the shift
    (its labelled days known) with equal weights, recency half-lives and a short window, each against
    the first model on the next week's labelled rows (paired, as the shadow comparison)."""
    schema, at = replay.schema, replay.starts[shift_week + 1]
    sent = {i: replay.rows(s, s + WEEK) for i, s in enumerate(replay.starts[: shift_week + 2])}
    known = replay.known(at, {i: sent[i] for i in range(shift_week + 1)})
    rows = sent[shift_week + 1]
    rows = rows[rows["timestamp"] < at + WEEK - replay.label_delay]
    y = rows["cnt"].to_numpy()
    first = row_errors("regression", y, replay.train(replay.begin, {}).predict(rows, schema))
    out = {}
    window = replay.params.prepare.window
    for name, change in {
        "equal weights": {},
        "half-life 28 days": {"half_life_days": 28.0},
        "half-life 7 days": {"half_life_days": 7.0},
        "half-life 3 days": {"half_life_days": 3.0},
        "last 28 days": {"last_days": 28},
    }.items():
        prepare_params = replay.params.prepare.model_copy(update={"window": window.model_copy(update=change)})
        params = replay.params.model_copy(update={"prepare": prepare_params})
        model = Trainer(schema, params).train(known, at, name)
        errors = row_errors("regression", y, model.predict(rows, schema))
        blocks = rows["timestamp"].dt.date.to_numpy()
        out[name] = compare_paired(errors, first, confidence=params.monitor.confidence, blocks=blocks).describe()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-until", default="2011-06-30")
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--full", action="store_true", help="replay to the end of 2012")
    parser.add_argument("--label-delay-days", type=int, default=2)
    parser.add_argument(
        "--scenario", default="all", choices=["all", "policies", "own-data", "unit-change", "refused", "label-shift"]
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    clock = time.perf_counter()
    results: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(), "full": args.full}
    if args.scenario in ("all", "policies"):
        weeks, summary = run_policies(base_replay(args), ["frozen", "weekly-always", "weekly-gated", "loop"])
        results["policies"] = summary
        results["weeks"] = [
            {
                "week": w.index,
                "from": str(w.start.date()),
                **{f"mae {p}": round(v, 1) for p, v in w.mae.items()},
                "harm": w.harm_level,
                "alerts": w.alerts,
                "events": w.events,
            }
            for w in weeks
        ]
        print(json.dumps(summary, indent=1))
    if args.scenario in ("all", "own-data"):
        results["own-data"] = own_data(args)
        print("own data:", results["own-data"])
    if args.scenario in ("all", "unit-change"):
        results["unit-change"] = input_scenario(args, "hum-fraction", "hum")
        print("unit change:", results["unit-change"])
    if args.scenario in ("all", "refused"):
        results["refused"] = input_scenario(args, "temp-fahrenheit", "temp")
        print("refused:", results["refused"])
    if args.scenario in ("all", "label-shift"):
        results["label-shift"] = label_shift(args)
        print("label shift:", {k: v for k, v in results["label-shift"].items() if k != "weeks"})
    results["seconds"] = round(time.perf_counter() - clock, 1)
    print(f"{results['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
