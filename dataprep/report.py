"""The data report: what came in, what was quarantined and why, how it was split, and a column profile.

`build_data_report` gives a JSON-ready dict; `render_html` turns it into one self-contained page
(inline CSS, no scripts, nothing fetched) that reads well offline.
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from loopline.schema import FeatureSchema, Kind, Task

EXAMPLES = 20
TOP_CATEGORIES = 12
HISTOGRAM_BINS = 12


def build_data_report(
    *,
    schema: FeatureSchema,
    rows_raw: int,
    rows_per_file: dict[str, int],
    quarantined: pd.DataFrame,
    duplicates_dropped: int,
    missing_dropped: int,
    splits: dict[str, pd.DataFrame],
    split_method: str,
    fills: dict[str, Any],
) -> dict[str, Any]:
    combined = pd.concat(splits.values(), ignore_index=True)
    return {
        "dataset": schema.name,
        "task": schema.task.value,
        "target": schema.target,
        "rows": {
            "raw": rows_raw,
            "quarantined": int(len(quarantined)),
            "duplicates_dropped": duplicates_dropped,
            "missing_dropped": missing_dropped,
            "prepared": int(len(combined)),
            **{name: int(len(frame)) for name, frame in splits.items()},
        },
        "files": rows_per_file,
        "dropped_columns": schema.drop_columns,
        "quarantine": quarantine_summary(quarantined),
        "split": split_summary(splits, schema, split_method),
        "missing_fills": fills,
        "feature_duplicates": feature_duplicates(combined, schema),
        "columns": {col.name: profile_column(combined[col.name], col.kind) for col in schema.columns},
        "target_by_split": {name: target_summary(frame[schema.target], schema) for name, frame in splits.items()},
    }


def quarantine_summary(quarantined: pd.DataFrame) -> dict[str, Any]:
    """Counts per problem ("column: kind of problem") and the first rows with their reasons."""
    problems: Counter[str] = Counter()
    for reason in quarantined.get("_reason", pd.Series(dtype=object)):
        for part in str(reason).split("; "):
            column, _, detail = part.partition(": ")
            problems[f"{column}: {_problem_kind(detail)}"] += 1
    examples = [
        {"file": row["_source_file"], "row": int(row["_source_row"]), "reason": row["_reason"]}
        for _, row in quarantined.head(EXAMPLES).iterrows()
    ]
    return {"rows": int(len(quarantined)), "problems": dict(problems.most_common()), "examples": examples}


def _problem_kind(detail: str) -> str:
    for marker in (
        "is not one of the categories",
        "is not a number",
        "is below the minimum",
        "is above the maximum",
        "is not a whole number",
        "is not a date/time",
        "missing value",
        "is not a finite number",
    ):
        if marker in detail:
            return marker.removeprefix("is ")
    return detail


def split_summary(splits: dict[str, pd.DataFrame], schema: FeatureSchema, method: str) -> dict[str, Any]:
    out: dict[str, Any] = {"method": method}
    for name, frame in splits.items():
        entry: dict[str, Any] = {"rows": int(len(frame))}
        if schema.time_column is not None and len(frame):
            times = frame[schema.time_column]
            entry["time_from"], entry["time_to"] = _plain(times.min()), _plain(times.max())
        if schema.group_column is not None:
            entry["groups"] = int(frame[schema.group_column].nunique())
        out[name] = entry
    return out


def feature_duplicates(df: pd.DataFrame, schema: FeatureSchema) -> dict[str, int]:
    """Rows that repeat another row's features (ignoring ids and time): conflicting ones limit any model."""
    features = [c.name for c in schema.features]
    same_features = df.duplicated(subset=features, keep=False)
    same_with_target = df.duplicated(subset=features + [schema.target], keep=False)
    return {
        "rows_sharing_features": int(same_features.sum()),
        "rows_sharing_features_and_target": int(same_with_target.sum()),
    }


def profile_column(values: pd.Series, kind: Kind) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": kind.value,
        "nulls": int(values.isna().sum()),
        "null_share": round(float(values.isna().mean()), 6),
        "distinct": int(values.nunique(dropna=True)),
    }
    present = values.dropna()
    if kind is Kind.NUMERIC and len(present):
        x = present.astype("float64")
        q = x.quantile([0.01, 0.25, 0.5, 0.75, 0.99]).to_numpy()
        counts, edges = np.histogram(x, bins=HISTOGRAM_BINS)
        out.update(
            min=float(x.min()),
            max=float(x.max()),
            mean=float(x.mean()),
            std=float(x.std(ddof=0)),
            p01=float(q[0]),
            p25=float(q[1]),
            median=float(q[2]),
            p75=float(q[3]),
            p99=float(q[4]),
            zeros_share=round(float((x == 0).mean()), 6),
            histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        )
    elif kind is Kind.CATEGORICAL and len(present):
        counts = present.value_counts()
        out["top"] = {str(k): int(v) for k, v in counts.head(TOP_CATEGORIES).items()}
    elif kind is Kind.DATETIME and len(present):
        out.update(min=_plain(present.min()), max=_plain(present.max()))
    return out


def target_summary(y: pd.Series, schema: FeatureSchema) -> dict[str, Any]:
    if schema.task.is_classification:
        counts = y.value_counts()
        total = max(len(y), 1)
        return {
            str(c): {"rows": int(counts.get(c, 0)), "share": round(float(counts.get(c, 0)) / total, 6)}
            for c in schema.classes
        }
    x = y.astype("float64")
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=0)),
        "median": float(x.median()),
        "min": float(x.min()),
        "max": float(x.max()),
        "skew": float(x.skew()),
    }


def metrics_of(report: dict[str, Any]) -> dict[str, Any]:
    """The few figures DVC tracks as metrics (`dvc metrics show/diff`)."""
    rows = report["rows"]
    return {"rows": rows, "quarantine_share": round(rows["quarantined"] / max(rows["raw"], 1), 6)}


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else value


# ----------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;width:100%}th,td{border-bottom:1px solid #eef;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f5f7fb;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#667}.bar{background:#4c78a8;height:.75rem;display:inline-block;vertical-align:middle}
.warn{color:#a33}.hist{display:flex;align-items:flex-end;gap:1px;height:40px}.hist span{background:#4c78a8;width:9px}
code{background:#f3f3f7;padding:0 .25rem;border-radius:3px}
"""


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    rows = report["rows"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Data report: {e(report['dataset'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Data report: {e(report['dataset'])}</h1>",
        f"<p class='muted'>Task: {e(report['task'])}, target <code>{e(report['target'])}</code>. "
        "Written by Loopline's prepare stage.</p>",
        "<h2>Rows</h2>",
        _table(
            ["", "rows"],
            [
                ["read from the sources", rows["raw"]],
                ["quarantined (invalid)", rows["quarantined"]],
                ["exact duplicates dropped", rows["duplicates_dropped"]],
                ["dropped by missing-value policy", rows["missing_dropped"]],
                ["prepared", rows["prepared"]],
            ],
        ),
        "<h3>Source files</h3>",
        _table(["file", "rows"], [[e(f), n] for f, n in report["files"].items()]),
    ]
    if report["dropped_columns"]:
        parts += [
            "<h3>Columns dropped by the schema</h3>",
            _table(["column", "reason"], [[e(c), e(r)] for c, r in report["dropped_columns"].items()]),
        ]

    q = report["quarantine"]
    parts.append(f"<h2>Quarantine: {q['rows']} rows</h2>")
    if q["rows"]:
        parts += [
            _table(["problem", "rows"], [[e(p), n] for p, n in q["problems"].items()]),
            "<h3>First rows</h3>",
            _table(["file", "row", "reason"], [[e(x["file"]), x["row"], e(x["reason"])] for x in q["examples"]]),
        ]
    else:
        parts.append("<p>Every row passed validation.</p>")

    split = report["split"]
    parts.append(f"<h2>Split: by {e(split['method'])}</h2>")
    heads = ["split", "rows", "from", "to"] + (
        ["groups"] if any("groups" in v for v in split.values() if isinstance(v, dict)) else []
    )
    split_rows = []
    for name in ("train", "val", "test"):
        s = split[name]
        row = [name, s["rows"], e(str(s.get("time_from", ""))), e(str(s.get("time_to", "")))]
        if "groups" in heads:
            row.append(s.get("groups", ""))
        split_rows.append(row)
    parts.append(_table(heads, split_rows))
    if report["missing_fills"]:
        parts += [
            "<h3>Missing values filled (values learned on train)</h3>",
            _table(["column", "fill"], [[e(c), e(repr(v))] for c, v in report["missing_fills"].items()]),
        ]

    parts.append("<h2>Target by split</h2>")
    parts.append(_target_table(report["target_by_split"], report["task"]))

    dup = report["feature_duplicates"]
    parts.append(
        f"<p class='muted'>{dup['rows_sharing_features']} prepared rows share their features with another row "
        f"({dup['rows_sharing_features_and_target']} also share the target).</p>"
    )

    parts.append("<h2>Columns</h2>")
    col_rows = []
    for name, prof in report["columns"].items():
        if prof["kind"] == "numeric" and "histogram" in prof:
            detail = (
                f"min {prof['min']:.4g} · median {prof['median']:.4g} · mean {prof['mean']:.4g} · "
                f"max {prof['max']:.4g} · std {prof['std']:.4g}" + _histogram(prof["histogram"]["counts"])
            )
        elif prof["kind"] == "categorical" and "top" in prof:
            detail = _bars(prof["top"])
        elif "min" in prof:
            detail = f"{e(str(prof['min']))} to {e(str(prof['max']))}"
        else:
            detail = ""
        nulls = f"<span class='warn'>{prof['nulls']}</span>" if prof["nulls"] else "0"
        col_rows.append([f"<b>{e(name)}</b>", prof["kind"], nulls, prof["distinct"], detail])
    parts.append(_table(["column", "kind", "nulls", "distinct", "profile"], col_rows, raw=True))
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(heads: list[str], rows: list[list[Any]], raw: bool = False) -> str:
    head = "".join(f"<th>{h}</th>" for h in heads)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, (int, float)) and not isinstance(cell, bool):
                cells.append(
                    f"<td class='n'>{cell:,}</td>" if isinstance(cell, int) else f"<td class='n'>{cell:.4g}</td>"
                )
            else:
                cells.append(f"<td>{cell}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _bars(counts: dict[str, int]) -> str:
    top = max(counts.values()) or 1
    return "<br>".join(
        f"<span class='bar' style='width:{120 * n / top:.0f}px'></span> {html.escape(k)} <span class='muted'>{n:,}</span>"
        for k, n in counts.items()
    )


def _histogram(counts: list[int]) -> str:
    top = max(counts) or 1
    bars = "".join(f"<span style='height:{max(1, round(40 * c / top))}px' title='{c}'></span>" for c in counts)
    return f"<div class='hist'>{bars}</div>"


def _target_table(by_split: dict[str, Any], task: str) -> str:
    if task == Task.REGRESSION:
        heads = ["split", "mean", "std", "median", "min", "max", "skew"]
        rows = [[name] + [s[k] for k in heads[1:]] for name, s in by_split.items()]
        return _table(heads, rows)
    classes = list(next(iter(by_split.values())).keys())
    heads = ["split"] + [f"class {html.escape(c)}" for c in classes]
    rows = [
        [name] + [f"{s[c]['rows']:,} ({100 * s[c]['share']:.1f}%)" for c in classes] for name, s in by_split.items()
    ]
    return _table(heads, rows)
