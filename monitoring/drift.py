"""Drift, as context: a window of served records against the production model's training data.

Evidently 0.7 tests each feature and the prediction for drift (the methods, thresholds and the share of
drifted columns that makes a drift are in params.yaml, `monitor.drift`); once delayed labels have
arrived, Evidently's regression or classification report is added. Drift is reported, weighted by each
feature's importance to the model, in the summary and the email; it is not an alarm by itself (the
verdict is monitoring.decide's, on the model's error). A window with fewer than `monitor.min_rows`
records gets no verdict: "insufficient data".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.config import MonitorParams
from loopline.features import class_probabilities
from loopline.schema import FeatureSchema, Kind, Task

PREDICTION = "prediction"
REFERENCE_ROWS = 50_000
"""The reference is sampled down to this many rows (seeded): drift tests gain nothing from more."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass
class WindowCheck:
    """One window of served traffic: its verdict (monitoring.decide's), with drift per column as context."""

    model_version: str
    window_start: str
    window_end: str
    rows: int
    verdict: str
    """"insufficient data", "normal", "degraded", "badly degraded", "failing", or "input problem"
    (also "... and input problem")."""
    drift_share: float | None = None
    share_threshold: float | None = None
    columns: list[ColumnDrift] = field(default_factory=list)
    importance: dict[str, float] = field(default_factory=dict)
    """Each feature's share of the model's permutation importance on the reference rows."""
    min_rows: int = 0
    decision: dict[str, Any] = field(default_factory=dict)
    """monitoring.decide.Decision.to_dict(): harm, input problems, shadow verdicts."""
    event_times: tuple[str, str] | None = None
    """The first and last event time of the window's records (the schema's time column), when sent."""
    recent: list[ColumnDrift] = field(default_factory=list)
    """Each feature against the traffic served in the window before this one (`drift_from_recent`)."""

    @property
    def drifted(self) -> list[ColumnDrift]:
        return [c for c in self.columns if c.drifted]

    @property
    def weighted_drift_share(self) -> float | None:
        """The drifted columns' share of the model's importance (None before a drift test ran)."""
        if self.drift_share is None:
            return None
        return round(sum(self.importance.get(c.column, 0.0) for c in self.drifted), 4)

    @property
    def period(self) -> str:
        start, end = self.event_times or (self.window_start, self.window_end)
        return f"{_day(start)} to {_day(end)}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weighted_drift_share": self.weighted_drift_share}

    def summary(self) -> str:
        """One paragraph for people: the verdict and what it rests on."""
        if self.verdict == "insufficient data":
            return (
                f"insufficient data: {self.rows} served records in the window, fewer than the "
                f"{self.min_rows} needed to judge; no verdict"
            )
        parts = [f"{self.verdict}: {self.rows} served records of {self.period}, model {self.model_version[:8]}"]
        harm = self.decision.get("harm") or {}
        c = harm.get("comparison")
        if c:
            source = "from labels" if harm.get("source") == "labels" else "estimated without labels"
            parts.append(
                f"{harm.get('metric') or 'error'} {c['error']:.3g} on {c['rows']} records ({source}) against "
                f"{c['reference_error']:.3g} normally: {c['change']:+.0%} ({c['confidence']:.0%} interval "
                f"{c['low']:+.0%} to {c['high']:+.0%})"
            )
        if self.drift_share is not None:
            parts.append(
                f"drift (context): {len(self.drifted)} of {len(self.columns)} columns, "
                f"{self.weighted_drift_share:.0%} of the model's importance"
            )
        if self.recent:
            moved = [c.column for c in self.recent if c.drifted]
            parts.append(f"against the previous window: {len(moved)} of {len(self.recent)} features moved")
        return "; ".join(parts)


def drift_from_recent(
    window: pd.DataFrame, previous: pd.DataFrame, schema: FeatureSchema, alpha: float = 0.01
) -> list[ColumnDrift]:
    """Each feature of the window against the same feature in the previous window's served traffic:
    a two-sample Kolmogorov-Smirnov test for numbers, a chi-square test of the category counts; drifted
    when the p-value is below `alpha` (tests whose power grows with the rows, so a few hundred records
    need a real change). Empty when either window has fewer than 30 rows."""
    from scipy.stats import chi2_contingency, ks_2samp

    if len(window) < 30 or len(previous) < 30:
        return []
    out = []
    for col in schema.features:
        if col.name not in window or col.name not in previous:
            continue
        now, before = window[col.name].dropna(), previous[col.name].dropna()
        if len(now) < 30 or len(before) < 30:
            continue
        if col.kind is Kind.NUMERIC:
            p, method = float(ks_2samp(now.to_numpy(float), before.to_numpy(float)).pvalue), "ks"
        else:
            counts = pd.concat([now.astype(str).value_counts(), before.astype(str).value_counts()], axis=1).fillna(0)
            counts = counts[counts.sum(axis=1) > 0]
            p = float(chi2_contingency(counts.to_numpy().T)[1]) if len(counts) > 1 else 1.0
            method = "chisquare"
        out.append(ColumnDrift(col.name, method, alpha, round(p, 6), p < alpha))
    return out


def _day(value: str) -> str:
    return str(value)[:16].replace("T", " ")


def check_window(
    window: pd.DataFrame,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    params: MonitorParams,
    *,
    model_version: str,
    window_start: datetime,
    window_end: datetime,
) -> tuple[WindowCheck, dict[str, Any]]:
    """Judge one window. `window`: request-log rows (features and `prediction`) with the target column
    where a label arrived (NaN elsewhere). `reference`: training rows with the target and the model's
    `prediction` on them (see reference_frame). Returns the result and Evidently's snapshots by name:
    "drift" (every served record) and, with enough labels, "performance" (the labelled ones)."""
    result = WindowCheck(
        model_version=model_version,
        window_start=window_start.isoformat(),
        window_end=window_end.isoformat(),
        rows=len(window),
        verdict="insufficient data",
        min_rows=params.min_rows,
    )
    if len(window) < params.min_rows:
        return result, {}
    from evidently import Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = [*(c.name for c in schema.features), PREDICTION]
    drift = params.drift
    preset = DataDriftPreset(
        columns=columns,
        drift_share=drift.share,
        num_method=drift.num_method,
        cat_method=drift.cat_method,
        threshold=drift.threshold,
        per_column_method=drift.per_column_method or None,
        per_column_threshold=drift.per_column_threshold or None,
    )
    plain = _definition(schema, with_target=False)
    snapshots = {
        "drift": Report([preset], include_tests=True).run(
            Dataset.from_pandas(window[columns], data_definition=plain),
            Dataset.from_pandas(reference[columns], data_definition=plain),
        )
    }
    result.columns, result.drift_share = _column_drift(snapshots["drift"].dict())
    result.share_threshold = drift.share

    target = schema.target
    labelled = window[window[target].notna()] if target in window else window.iloc[:0]
    if len(labelled) >= params.min_labelled_rows:
        with_target = _definition(schema, with_target=True)
        snapshots["performance"] = Report([_performance_preset(schema)]).run(
            Dataset.from_pandas(labelled[columns + [target]], data_definition=with_target),
            Dataset.from_pandas(reference[columns + [target]], data_definition=with_target),
        )
    result.verdict = "normal"
    return result, snapshots


def _definition(schema: FeatureSchema, *, with_target: bool) -> Any:
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression

    numeric = [c.name for c in schema.numeric_features]
    categorical = [c.name for c in schema.categorical_features]
    task = schema.task.value
    if task == Task.REGRESSION:
        numeric.append(PREDICTION)
    else:
        categorical.append(PREDICTION)
    extra: dict[str, Any] = {}
    if with_target:
        if task == Task.REGRESSION:
            numeric.append(schema.target)
            extra["regression"] = [Regression(target=schema.target, prediction=PREDICTION)]
        else:
            categorical.append(schema.target)
            kind = BinaryClassification if task == Task.BINARY else MulticlassClassification
            extra["classification"] = [kind(target=schema.target, prediction_labels=PREDICTION)]
    return DataDefinition(numerical_columns=numeric, categorical_columns=categorical, **extra)


def _performance_preset(schema: FeatureSchema) -> Any:
    from evidently.presets import ClassificationPreset, RegressionPreset

    return RegressionPreset() if schema.task is Task.REGRESSION else ClassificationPreset()


def _column_drift(report: dict[str, Any]) -> tuple[list[ColumnDrift], float]:
    """Per-column drift from the test statuses (a FAIL means the column drifted: the score's direction
    depends on the method), and the drifted share."""
    failed = {
        t["metric_config"]["params"]["column"]: str(t["status"]).endswith("FAIL")
        for t in report.get("tests", [])
        if t["metric_config"]["params"].get("type") == "evidently:metric_v2:ValueDrift"
    }
    columns, share = [], 0.0
    for m in report["metrics"]:
        kind = m["config"]["type"]
        if kind == "evidently:metric_v2:ValueDrift":
            name = m["config"]["column"]
            columns.append(
                ColumnDrift(
                    name,
                    m["config"]["method"],
                    float(m["config"]["threshold"]),
                    float(m["value"]),
                    failed.get(name, False),
                )
            )
        elif kind == "evidently:metric_v2:DriftedColumnsCount":
            share = float(m["value"]["share"])
    return columns, share


def save_check(result: WindowCheck, snapshots: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """The JSON summary and each of Evidently's reports as a self-contained HTML page (<name>.html)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"summary": out_dir / "summary.json"}
    files["summary"].write_text(json.dumps({"summary": result.summary(), **result.to_dict()}, indent=2, default=str))
    for name, snapshot in snapshots.items():
        files[name] = out_dir / f"{name}.html"
        snapshot.save_html(str(files[name]))
    return files


def add_to_workspace(snapshots: dict[str, Any], workspace: Path, project_name: str = "Loopline monitoring") -> None:
    """Add the runs to a local Evidently workspace, so `evidently ui --workspace <dir>` shows the history."""
    if not snapshots:
        return
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(workspace))
    found = ws.search_project(project_name)
    project = found[0] if found else ws.create_project(project_name)
    for snapshot in snapshots.values():
        ws.add_run(project.id, snapshot, include_data=False)


def reference_frame(
    reference: pd.DataFrame, schema: FeatureSchema, predictions: np.ndarray, seed: int = 0
) -> pd.DataFrame:
    """Training rows with the model's predictions as the log records them, sampled to REFERENCE_ROWS."""
    frame = reference[[c.name for c in schema.features] + [schema.target]].copy()
    if schema.task.is_classification:
        classes = np.array(list(schema.classes), dtype=object)
        frame[PREDICTION] = classes[class_probabilities(predictions).argmax(axis=1)]
    else:
        frame[PREDICTION] = predictions.astype(np.float64)
    for col in schema.categorical_features:
        frame[col.name] = frame[col.name].astype(object)
    if len(frame) > REFERENCE_ROWS:
        frame = frame.sample(REFERENCE_ROWS, random_state=seed)
    return frame.reset_index(drop=True)
