"""What the loop decides from a window's evidence: plain functions over per-row errors and columns.

The monitoring check (monitoring.check) gathers the evidence from the request log, the labels and the
registry; the scenario suite (benchmarks/loop.py) gathers it from a replay; both decide here.

- Harm (`judge_harm`): the production model's error on the window against its normal error (its own
  errors on its test split, the newest rows it was judged on), with bootstrap confidence. Severity climbs
  through `monitor.severities` (error +20%, +50%, +100% above normal by default); an open incident
  alerts again only when it climbs. From labels when enough arrived, else from a label-free estimate
  (`estimate_errors`: direct loss estimation for regression, confidence-based for classification).
- Live promotion (`judge_challenger`): a candidate scored in shadow is promoted when it beats production
  on the same labelled live rows with confidence, retired when it is worse with confidence or unproven
  after `promote.max_windows` checks.
- Rollback (`judge_previous`): after a promotion the replaced model stays in shadow; when the new model
  is worse than it on the same live rows with confidence, production goes back.
- Level shifts (`judge_level`, regression): the labelled window's true values above or below
  production's predictions by a steady factor; production with its output shifted by it becomes a
  challenger (`release.recalibrate`), promoted only on the next window's live evidence.
- The input contract (`input_problems`): refused requests, missing values and unit-like changes per
  column are an incident of their own, named per column; a retraining cannot fix them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from loopline.config import LiveParams, MonitorParams, RecalibrateParams
from loopline.evidence import Comparison, compare_paired, compare_to_reference
from loopline.schema import FeatureSchema

SEVERITY_NAMES = ("normal", "degraded", "badly degraded", "failing")


# ------------------------------------------------------------------------------------------- harm
@dataclass
class Harm:
    level: int
    """0: normal; 1..: how many of monitor.severities the error's increase exceeds with confidence."""
    comparison: Comparison | None
    source: str | None
    """"labels", "estimate" (no labels yet), or None: not judged."""
    metric: str = ""

    @property
    def name(self) -> str:
        return SEVERITY_NAMES[min(self.level, len(SEVERITY_NAMES) - 1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "name": self.name,
            "source": self.source,
            "metric": self.metric,
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


def judge_harm(
    errors: np.ndarray,
    normal_errors: np.ndarray,
    params: MonitorParams,
    *,
    blocks: np.ndarray | None = None,
    source: str = "labels",
    metric: str = "",
    seed: int = 0,
) -> Harm:
    """The window's per-row errors against the model's normal ones: level k when the increase of the mean
    error is above the k-th of `params.severities` with `params.confidence`."""
    if len(errors) == 0 or len(normal_errors) == 0:
        return Harm(0, None, None, metric)
    comparison = compare_to_reference(errors, normal_errors, confidence=params.confidence, blocks=blocks, seed=seed)
    level = sum(comparison.above(bound) for bound in params.severities)
    return Harm(level, comparison, source, metric)


def estimate_errors(
    task: str,
    reference_inputs: np.ndarray,
    reference_errors: np.ndarray,
    window_inputs: np.ndarray,
    window_outputs: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Per-row errors expected on unlabelled rows.

    Regression: direct loss estimation (as NannyML's DLE does): a gradient-boosted model learns the
    absolute error from the inputs and the prediction on reference rows whose error is known, and
    predicts it for the window. Classification: confidence-based (as CBPE does): a calibrated model's
    chance of being wrong on a row is 1 - its top probability (`window_outputs`: probabilities)."""
    if task != "regression":
        from loopline.features import class_probabilities

        return 1.0 - class_probabilities(window_outputs).max(axis=1)
    from sklearn.ensemble import HistGradientBoostingRegressor

    model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, random_state=seed)
    model.fit(reference_inputs, reference_errors)
    return np.clip(model.predict(window_inputs), 0.0, None)


# --------------------------------------------------------------------------- challengers, rollback
@dataclass
class ShadowVerdict:
    version: str
    role: str
    """"challenger" (a candidate) or "previous" (the model a promotion replaced)."""
    decision: str
    """challenger: promote | retire | wait; previous: rollback | release | wait."""
    reason: str
    comparison: Comparison | None = None
    """The challenger's (or, for `previous`, production's) error against the other's on the same rows."""
    windows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "comparison": self.comparison.to_dict() if self.comparison else None}


def judge_challenger(
    version: str,
    errors: np.ndarray,
    production_errors: np.ndarray,
    live: LiveParams,
    *,
    windows: int,
    blocks: np.ndarray | None = None,
    seed: int = 0,
) -> ShadowVerdict:
    """A candidate's per-row errors against production's on the same labelled live rows; `windows`: the
    checks it has been in shadow for, this one included."""
    if len(errors) < live.min_rows:
        if windows >= live.max_windows:
            return ShadowVerdict(
                version, "challenger", "retire", f"only {len(errors)} labelled rows in shadow", None, windows
            )
        return ShadowVerdict(
            version,
            "challenger",
            "wait",
            f"{len(errors)} labelled rows in shadow, {live.min_rows} needed",
            None,
            windows,
        )
    c = compare_paired(errors, production_errors, confidence=live.confidence, blocks=blocks, seed=seed)
    if c.below(-live.min_gain):
        return ShadowVerdict(
            version, "challenger", "promote", f"less error than production: {c.describe()}", c, windows
        )
    if c.above(0.0):
        return ShadowVerdict(version, "challenger", "retire", f"more error than production: {c.describe()}", c, windows)
    if windows >= live.max_windows:
        return ShadowVerdict(
            version,
            "challenger",
            "retire",
            f"not better than production after {windows} checks: {c.describe()}",
            c,
            windows,
        )
    return ShadowVerdict(version, "challenger", "wait", f"no clear difference yet: {c.describe()}", c, windows)


def judge_previous(
    version: str,
    production_errors: np.ndarray,
    previous_errors: np.ndarray,
    live: LiveParams,
    *,
    windows: int,
    blocks: np.ndarray | None = None,
    seed: int = 0,
) -> ShadowVerdict:
    """Production (promoted lately) against the model it replaced, on the same labelled live rows."""
    if len(production_errors) < live.min_rows:
        decision = "release" if windows >= live.max_windows else "wait"
        return ShadowVerdict(version, "previous", decision, f"{len(production_errors)} labelled rows", None, windows)
    c = compare_paired(production_errors, previous_errors, confidence=live.confidence, blocks=blocks, seed=seed)
    if live.rollback and c.above(0.0):
        return ShadowVerdict(
            version,
            "previous",
            "rollback",
            f"the promoted model has more error than {version}: {c.describe()}",
            c,
            windows,
        )
    if windows >= live.watch_windows:
        return ShadowVerdict(version, "previous", "release", f"the promoted model holds: {c.describe()}", c, windows)
    return ShadowVerdict(version, "previous", "wait", f"watching: {c.describe()}", c, windows)


# ----------------------------------------------------------------------------------- level shifts
@dataclass
class Level:
    offset: float
    """What to add to the model's output on its transformed scale (log1p or standardised target units)."""
    change: float
    """The level change as people read it: a factor - 1 on 1 + y (log1p), or a share of the target's
    standard deviation (standardised)."""
    low: float
    high: float
    rows: int
    days: int
    act: bool
    """A steady change of at least `min_change` whose interval excludes no change."""
    transform: str

    def describe(self) -> str:
        unit = "" if self.transform == "log1p" else " sd"
        return (
            f"true values {self.change:+.0%}{unit} against the predictions (interval {self.low:+.0%} to "
            f"{self.high:+.0%}, {self.rows} rows over {self.days} days)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_level(
    y: np.ndarray,
    predictions: np.ndarray,
    transform: str,
    target_scale: float,
    params: RecalibrateParams,
    *,
    blocks: np.ndarray,
) -> Level | None:
    """The mean residual on the model's own target scale (log1p(y) - log1p(prediction), or y - prediction
    for a standardised target), with a t interval over the blocks' (days') means, so that one unusual
    day or hour cannot make a level. None: fewer than three blocks, or an untransformed target."""
    from scipy import stats

    if transform not in ("log1p", "standardize") or len(y) == 0:
        return None
    y, predictions = np.asarray(y, np.float64), np.asarray(predictions, np.float64)
    if transform == "log1p":
        residuals = np.log1p(np.clip(y, 0, None)) - np.log1p(np.clip(predictions, 0, None))
    else:
        residuals = y - predictions
    means = pd.Series(residuals).groupby(np.asarray(blocks).astype(str)).mean().to_numpy()
    if len(means) < 3:
        return None
    offset = float(means.mean())
    half = float(stats.t.ppf(1 - (1 - params.confidence) / 2, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means)))
    if transform == "log1p":
        change, low, high = (float(np.expm1(v)) for v in (offset, offset - half, offset + half))
    else:
        scale = max(target_scale, 1e-12)
        change, low, high = offset / scale, (offset - half) / scale, (offset + half) / scale
    act = abs(change) >= params.min_change and (low > 0 or high < 0)
    return Level(offset, change, low, high, len(y), len(means), act, transform)


# --------------------------------------------------------------------------------- input contract
@dataclass
class InputProblem:
    kind: str
    """refused | missing | units"""
    column: str | None
    detail: str
    since: str | None = None

    def describe(self) -> str:
        where = f"`{self.column}`" if self.column else "requests"
        return f"{where}: {self.detail}" + (f" (since {self.since})" if self.since else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A value sent in other units differs from what the model learned by one of these factors (or offsets).
UNIT_FACTORS = {
    100.0: "a percentage where a fraction was seen (x100)",
    0.01: "a fraction where a percentage was seen (x0.01)",
    1000.0: "x1000 (e.g. grams for kilograms, metres for kilometres)",
    0.001: "x0.001 (e.g. kilograms for grams)",
    10.0: "x10",
    0.1: "x0.1",
}
UNIT_OFFSETS = {273.15: "Kelvin where Celsius was seen (+273.15)", -273.15: "Celsius where Kelvin was seen"}


def unit_change(window: np.ndarray, reference: np.ndarray) -> str | None:
    """How a numeric column's window values relate to its reference values when they look like the same
    quantity in other units: location and spread moved by one factor of UNIT_FACTORS (the median within
    a factor 1.5 of it, the 10-90% spread within 1.8: a week's own variation, far from the next power of
    ten), Fahrenheit for Celsius, or the location by an offset of UNIT_OFFSETS with the spread kept; and
    the two distributions barely overlap. None otherwise (seasons move a column, rarely tenfold)."""
    window, reference = window[np.isfinite(window)], reference[np.isfinite(reference)]
    if len(window) < 20 or len(reference) < 20:
        return None
    from scipy.stats import ks_2samp

    if ks_2samp(window, reference).statistic < 0.5:
        return None
    w_med, r_med = np.median(window), np.median(reference)
    w_spread = np.subtract(*np.percentile(window, [90, 10]))
    r_spread = np.subtract(*np.percentile(reference, [90, 10]))
    if r_med != 0 and r_spread > 0 and w_spread > 0:
        location, spread = w_med / r_med, w_spread / r_spread
        for factor, words in UNIT_FACTORS.items():
            if location > 0 and abs(np.log(location / factor)) < 0.4 and abs(np.log(spread / factor)) < 0.6:
                return f"looks like {words}: median {w_med:.3g} against {r_med:.3g} in training"
    if r_spread > 0 and abs(np.log(max(w_spread, 1e-12) / r_spread / 1.8)) < 0.25:
        if abs(w_med - (1.8 * r_med + 32)) < 0.15 * max(abs(1.8 * r_med + 32), r_spread * 1.8):
            return f"looks like Fahrenheit where Celsius was seen: median {w_med:.3g} against {r_med:.3g} in training"
    if r_spread > 0 and abs(np.log(max(w_spread, 1e-12) / r_spread)) < 0.25:
        for offset, words in UNIT_OFFSETS.items():
            if abs((w_med - r_med) - offset) < 0.1 * abs(offset):
                return f"looks like {words}: median {w_med:.3g} against {r_med:.3g} in training"
    return None


def input_problems(
    window: pd.DataFrame,
    missing: pd.DataFrame,
    reference: pd.DataFrame,
    refused: pd.DataFrame,
    served_requests: int,
    schema: FeatureSchema,
    params: MonitorParams,
    *,
    time_column: str = "served_at",
) -> list[InputProblem]:
    """The window's breaches of the input contract.

    `window`: served rows; `missing`: their missing-value flags per feature (request_log.missing_matrix);
    `reference`: the training rows; `refused`: the refusal log's rows of the window (columns named by each
    400); `served_requests`: requests answered in the window."""
    limits = params.inputs
    problems: list[InputProblem] = []
    total = served_requests + len(refused)
    if total and len(refused) / total > limits.max_refused_share:
        named = refused["columns"].fillna("").str.split(",").explode()
        named = named[named != ""]
        counts = named.value_counts()
        for column, n in counts.items() if len(counts) else [(None, len(refused))]:
            first = refused[refused["columns"].fillna("").str.split(",").map(lambda cs, c=column: c in cs)]
            example = first["problem"].iloc[0] if len(first) else refused["problem"].iloc[0]
            problems.append(
                InputProblem(
                    "refused",
                    column,
                    f'{n} of {total} requests refused ({n / total:.0%}), e.g. "{example}"',
                    _first_time(first if len(first) else refused, "refused_at"),
                )
            )
    if len(window):
        for column in missing.columns:
            share = float(missing[column].mean())
            if share > limits.max_missing_share:
                flagged = window[missing[column].to_numpy()]
                problems.append(
                    InputProblem(
                        "missing",
                        column,
                        f"{share:.0%} of records came without a value (the learned fill stood in)",
                        _first_time(flagged, time_column),
                    )
                )
        for col in schema.numeric_features:
            if col.name not in window or col.name not in reference:
                continue
            present = ~missing[col.name].to_numpy() if col.name in missing else np.ones(len(window), bool)
            values = window[col.name].to_numpy(np.float64)[present]
            words = unit_change(values, reference[col.name].to_numpy(np.float64))
            if words:
                low, high = np.percentile(reference[col.name].dropna(), [0.5, 99.5])
                outside = window[present & ((window[col.name] < low) | (window[col.name] > high)).to_numpy()]
                problems.append(InputProblem("units", col.name, words, _first_time(outside, time_column)))
    return problems


def _first_time(rows: pd.DataFrame, column: str) -> str | None:
    if column not in rows or rows.empty:
        return None
    first = pd.to_datetime(rows[column]).min()
    return None if pd.isna(first) else f"{first:%Y-%m-%d %H:%M} UTC"


def retrain_due(
    harm_alerted: bool,
    input_problem: bool,
    newest_labelled: pd.Timestamp | None,
    learned_until: pd.Timestamp | None,
    refresh_days: float | None,
) -> str | None:
    """Why to train a candidate now: "harm" (an alert, new or worse), "refresh" (labelled rows
    `refresh_days` newer than what production learned), or None. Never while the input contract is
    broken: a retraining cannot fix an input bug, and the harvest would teach it the broken values."""
    if input_problem:
        return None
    if harm_alerted:
        return "harm"
    if refresh_days is None or newest_labelled is None or learned_until is None:
        return None
    return "refresh" if newest_labelled - learned_until >= pd.Timedelta(days=refresh_days) else None


@dataclass
class Decision:
    """What one check concluded, for the flow to act on and the email to say."""

    harm: Harm
    inputs: list[InputProblem] = field(default_factory=list)
    shadows: list[ShadowVerdict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "harm": self.harm.to_dict(),
            "inputs": [p.to_dict() for p in self.inputs],
            "shadows": [s.to_dict() for s in self.shadows],
        }


def permutation_importance(
    predict: Any, frame: pd.DataFrame, schema: FeatureSchema, y: np.ndarray, seed: int = 0, rows: int = 2000
) -> dict[str, float]:
    """Each feature's share of the error added when its values are shuffled (on up to `rows` rows):
    what drift in that column could cost. `predict(frame)` returns the model's outputs."""
    rng = np.random.default_rng(seed)
    if len(frame) > rows:
        keep = rng.choice(len(frame), rows, replace=False)
        frame, y = frame.iloc[keep].reset_index(drop=True), y[keep]
    task = schema.task.value
    from loopline.evidence import row_errors

    base = row_errors(task, y, predict(frame)).mean()
    gains = {}
    for col in schema.features:
        shuffled = frame.copy()
        shuffled[col.name] = rng.permutation(shuffled[col.name].to_numpy())
        gains[col.name] = max(0.0, float(row_errors(task, y, predict(shuffled)).mean() - base))
    total = sum(gains.values())
    return {k: round(v / total, 4) if total > 0 else 0.0 for k, v in gains.items()}
