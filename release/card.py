"""A version's lineage record and its model card: where a model came from and how it did."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import yaml

from loopline.config import SplitParams
from loopline.paths import ProjectPaths
from loopline.registry import now, sha256_file
from loopline.schema import FeatureSchema
from release.gate import GateReport

PACKAGES = ("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy", "pandas", "scikit-learn", "dvc", "bentoml")


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def data_version(paths: ProjectPaths) -> dict[str, Any]:
    """The DVC hashes of the data the model was trained and evaluated on, from dvc.lock."""
    lock_file = paths.root / "dvc.lock"
    if not lock_file.is_file():
        return {"dvc_lock": None}
    lock = yaml.safe_load(lock_file.read_text()) or {}
    outs = {}
    for stage in ("ingest", "prepare"):
        for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
            if out["path"].startswith("data/"):
                outs[out["path"]] = out.get("md5")
    return {"dvc_lock_sha256": sha256_file(lock_file), "outs": outs}


def harvested_batches(paths: ProjectPaths) -> list[dict[str, Any]]:
    """The harvested batches the model's splits hold: file, rows per split, served-time range."""
    if not paths.prepared_rows.is_file():
        return []
    import pandas as pd

    rows = pd.read_parquet(paths.prepared_rows)
    if "_request_id" not in rows.columns:
        return []
    harvested = rows[rows["_request_id"].notna()]
    return [
        {
            "file": str(file),
            "rows": {str(k): int(v) for k, v in part["split"].value_counts().items()},
            "served_from": str(pd.to_datetime(part["_served_at"]).min()),
            "served_to": str(pd.to_datetime(part["_served_at"]).max()),
        }
        for file, part in harvested.groupby("_source_file", sort=True)
    ]


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def lineage(
    paths: ProjectPaths,
    schema: FeatureSchema,
    evidence: dict[str, Any],
    report: GateReport,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The version record: data, params, seed, code, packages, the pipeline's evidence and the verdict.
    `evidence`: metrics, slices, training (training.json) and parity, as the pipeline left them."""
    params = yaml.safe_load(paths.params.read_text()) or {}
    dirty = _git(paths.root, "status", "--porcelain", "--untracked-files=no")
    return {
        "schema": schema.name,
        "task": schema.task.value,
        "target": schema.target,
        "data": data_version(paths),
        "harvested": harvested_batches(paths),
        "params": params,
        "seed": params.get("seed"),
        # `recorded`: the commit a retraining was saved as when it is not HEAD (a DVC experiment's)
        "git": recorded
        or {"commit": _git(paths.root, "rev-parse", "HEAD"), "dirty": bool(dirty) if dirty is not None else None},
        "packages": package_versions(),
        "metrics": evidence["metrics"],
        "slices": evidence["slices"],
        "training": _without_histories(evidence["training"]),
        "checks": evidence["training"].get("checks"),
        "skipped_checks": evidence["training"].get("skipped_checks", []),
        "parity": evidence["parity"],
        "gate": report.to_dict(),
    }


HELD_OUT = {
    "time": "a held-out split later in time than its training data",
    "group": "a held-out split of groups it never saw in training",
    "random": "a held-out split of rows drawn at random from the same period as its training data",
}


def split_method(meta: dict[str, Any]) -> str:
    """How the version's data was split, from its lineage's params (params.yaml's default if unset)."""
    return (((meta.get("params") or {}).get("prepare") or {}).get("split") or {}).get("method") or SplitParams().method


def _harvested_line(batches: list[dict[str, Any]]) -> str:
    if not batches:
        return "none"
    train = sum(b["rows"].get("train", 0) for b in batches)
    total = sum(sum(b["rows"].values()) for b in batches)
    served = f"served {min(b['served_from'] for b in batches)} to {max(b['served_to'] for b in batches)}"
    return f"{total} rows from {len(batches)} batch(es), {train} of them in training ({served})"


def model_card(version_id: str, meta: dict[str, Any], schema: FeatureSchema) -> str:
    m = meta["metrics"]
    names = [k for k in m["model"]]
    rows = [
        f"| {who} | " + " | ".join(f"{m[who].get(n, float('nan')):.4g}" for n in names) + " |"
        for who in m
        if who != "rows"
    ]
    gate = meta["gate"]
    features = "\n".join(
        f"| `{c.name}` | {c.kind.value} | {'yes' if c.nullable else 'no'} | {c.description or ''} |"
        for c in schema.features
    )
    failed = [r for r in gate["rules"] if not r["passed"]]
    git = meta["git"]
    return f"""# Model card: {schema.name} {version_id}

- **Task**: {schema.task.value} on `{schema.target}`
- **Registered**: {meta.get("registered_at", now())}
- **Gate**: {"passed" if gate["passed"] else "FAILED"} ({len(gate["rules"]) - len(failed)} of {len(gate["rules"])} rules){"; champion " + gate["champion"] if gate["champion"] else "; first model, no champion"}
- **Code**: git {git["commit"] or "unknown"}{" (uncommitted changes)" if git["dirty"] else ""}
- **Data**: {", ".join(f"{k} {v}" for k, v in meta["data"].get("outs", {}).items()) or "no dvc.lock"}
- **Harvested traffic**: {_harvested_line(meta.get("harvested") or [])}
- **Seed**: {meta["seed"]}; skipped recipe checks: {meta["skipped_checks"] or "none"}

## Intended use
Predicts `{schema.target}` for rows shaped like the schema below, through Loopline's HTTP service.
It was evaluated on {HELD_OUT[split_method(meta)]}; watch the drift reports before trusting it on
data unlike that.

## Test metrics ({m["rows"]} rows), next to the baselines
| model | {" | ".join(names)} |
|---|{"---:|" * len(names)}
{chr(10).join(rows)}

## Gate rules that failed
{chr(10).join(f"- `{r['name']}`: {r['value']} vs {r['threshold']} {r['detail']}" for r in failed) or "none"}

## Inputs
| feature | kind | nullable | description |
|---|---|---|---|
{features}

## Training
{json.dumps(meta["training"], indent=2, default=str)}
"""


def _without_histories(training: dict[str, Any]) -> dict[str, Any]:
    """training.json for the model card: settings and outcomes, not per-epoch histories or check details."""
    out = {k: v for k, v in training.items() if k not in ("history", "checks", "ensemble")}
    if "ensemble" in training:
        out["ensemble"] = [{k: v for k, v in member.items() if k != "history"} for member in training["ensemble"]]
    return out
