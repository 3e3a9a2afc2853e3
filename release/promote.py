"""From the pipeline's outputs to the registry: register a candidate, judge it, promote, roll back.
Imports no torch: everything here works on the ONNX file and the records the pipeline left.

`register_candidate` gathers the evidence the pipeline left (evaluation, baselines, recipe checks,
export parity), scores the production model on the same test rows, runs the gate and stores the
candidate as an immutable registry version with its lineage and model card, whatever the verdict.

`promote` moves the production pointer to a version. It refuses one whose gate failed (unless forced
with a reason, recorded), whose file no longer matches its hash, or that does not load and reproduce
its golden batch in ONNX Runtime. When production changed since the version was judged, the gate is
judged again against the new champion first. The promoted model is also saved to BentoML's model store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.atomic import write_json
from loopline.config import GateParams, load_params
from loopline.errors import LooplineError
from loopline.features import encode_target
from loopline.metrics import metrics_by_slice, task_metrics
from loopline.paths import MODEL_FILES, ProjectPaths
from loopline.registry import (
    EXPECTED_FILE,
    GOLDEN_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    TEST_ROWS_FILE,
    Registry,
    RegistryError,
    Version,
    sha256_file,
)
from loopline.runtime import onnx_session, predict_frame, reproduces_golden
from loopline.schema import FeatureSchema, load_schema
from release.card import lineage, model_card
from release.gate import Evidence, GateReport, judge
from release.store import save_to_bentoml

log = logging.getLogger(__name__)


class PromotionRefused(LooplineError):
    pass


# ------------------------------------------------------------------------------- scoring with ONNX
def onnx_predict_file(model_file: Path, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    return predict_frame(onnx_session(model_file), frame, schema)


def version_schema(version: Version) -> FeatureSchema:
    """The feature schema a registered version was trained on."""
    return load_schema(version.file(SCHEMA_FILE))


def score_version(
    version: Version, frame: pd.DataFrame, schema: FeatureSchema, slice_columns: list[str], min_slice_rows: int
) -> tuple[dict[str, float], dict[str, Any]] | None:
    """A registered model's metrics on the given rows, overall and per slice; None if it cannot score
    them (another task or target, or feature columns it needs are missing)."""
    champion_schema = version_schema(version)
    if champion_schema.task != schema.task or champion_schema.target != schema.target:
        return None
    if any(c.name not in frame.columns for c in champion_schema.features):
        return None
    pred = onnx_predict_file(version.model, frame, champion_schema)
    y = encode_target(frame, schema)
    task = schema.task.value
    present = [c for c in slice_columns if c in frame.columns]
    return task_metrics(task, y, pred), metrics_by_slice(frame, y, pred, task, present, min_slice_rows)


# ------------------------------------------------------------------------------------- evidence
def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class Candidate:
    onnx_file: Path
    schema: FeatureSchema
    test: pd.DataFrame
    metrics: dict[str, Any]
    slices: dict[str, Any]
    training: dict[str, Any]
    parity: dict[str, Any] | None


def load_candidate(paths: ProjectPaths) -> Candidate:
    missing = [
        p
        for p in (
            paths.onnx_file,
            paths.golden_expected,
            paths.evaluate_metrics,
            paths.evaluate_slices,
            paths.model_dir / MODEL_FILES["training"],
        )
        if not p.is_file()
    ]
    if missing:
        raise PromotionRefused(f"no complete candidate: {[str(p) for p in missing]} missing; run `dvc repro` first")
    return Candidate(
        onnx_file=paths.onnx_file,
        schema=load_schema(paths.model_dir / MODEL_FILES["schema"]),
        test=pd.read_parquet(paths.split("test")),
        metrics=_json(paths.evaluate_metrics),
        slices=_json(paths.evaluate_slices),
        training=_json(paths.model_dir / MODEL_FILES["training"]),
        parity=_json(paths.export_report),
    )


def gather_evidence(
    cand_metrics: dict[str, Any],
    slices: dict[str, Any],
    checks: list | None,
    parity: dict | None,
    onnx_sha: str,
    schema: FeatureSchema,
    test: pd.DataFrame,
    registry: Registry,
    min_slice_rows: int,
) -> Evidence:
    baselines = {k: v for k, v in cand_metrics.items() if k not in ("model", "rows")}
    ev = Evidence(
        metrics=cand_metrics["model"],
        slices=slices,
        baselines=baselines,
        checks=checks,
        parity=parity,
        onnx_sha256=onnx_sha,
    )
    champion = registry.production()
    if champion is not None:
        ev.champion = champion
        try:
            scored = score_version(registry.get(champion), test, schema, list(slices), min_slice_rows)
        except LooplineError as exc:
            log.warning("production model %s cannot be scored: %s", champion, exc)
            scored = None
        if scored is not None:
            ev.champion_metrics, ev.champion_slices = scored
    return ev


# ------------------------------------------------------------------------------ register, promote
def register_candidate(
    paths: ProjectPaths, registry: Registry, recorded: dict[str, Any] | None = None
) -> tuple[Version, GateReport, bool]:
    """Store the candidate under `paths` as a version with its lineage (`recorded`: the git record of a
    retraining saved as a DVC experiment) and its gate verdict."""
    params = load_params(paths.params)
    cand = load_candidate(paths)
    sha = sha256_file(cand.onnx_file)
    ev = gather_evidence(
        cand.metrics,
        cand.slices,
        cand.training.get("checks"),
        cand.parity,
        sha,
        cand.schema,
        cand.test,
        registry,
        params.evaluate.min_slice_rows,
    )
    report = judge(params.gate, ev)
    meta = lineage(
        paths,
        cand.schema,
        {"metrics": cand.metrics, "slices": cand.slices, "training": cand.training, "parity": cand.parity},
        report,
        recorded,
    )
    staging = paths.state_dir / "registry-staging"
    staging.mkdir(parents=True, exist_ok=True)
    cand.test.to_parquet(staging / TEST_ROWS_FILE, index=False)
    files = {
        SCHEMA_FILE: paths.model_dir / MODEL_FILES["schema"],
        GOLDEN_FILE: paths.golden_batch,
        EXPECTED_FILE: paths.golden_expected,
        TEST_ROWS_FILE: staging / TEST_ROWS_FILE,
        REFERENCE_FILE: paths.split("train"),
    }
    version, created = registry.register(cand.onnx_file, files, meta, model_card(sha[:16], meta, cand.schema))
    report = report if created else GateReport.from_dict(version.metadata["gate"])
    write_json(paths.gate_verdict, {"version": version.id, **report.to_dict()})
    return version, report, created


def verify_loads(version: Version) -> None:
    """The file loads in ONNX Runtime and reproduces its golden batch."""
    try:
        ok = reproduces_golden(onnx_session(version.model, "cpu"), version.path, version_schema(version))
    except Exception as exc:  # onnxruntime raises its own types on a broken graph or input
        raise PromotionRefused(f"{version.model}: ONNX Runtime cannot run the model: {exc}") from exc
    if not ok:
        raise PromotionRefused(
            f"{version.model}: ONNX Runtime's predictions on the golden batch differ from "
            "the ones recorded at registration"
        )


def rejudge(version: Version, registry: Registry, rules: GateParams | None, min_slice_rows: int) -> GateReport:
    """The gate again, from the version's own records, against the current production model."""
    meta = version.metadata
    schema = version_schema(version)
    test = pd.read_parquet(version.file(TEST_ROWS_FILE))
    checks = meta.get("checks")
    ev = gather_evidence(
        meta["metrics"],
        meta["slices"],
        checks,
        meta.get("parity"),
        meta["sha256"],
        schema,
        test,
        registry,
        min_slice_rows,
    )
    return judge(rules, ev)


def promote(
    paths: ProjectPaths, registry: Registry, version_id: str, *, force_reason: str | None = None
) -> dict[str, Any]:
    params = load_params(paths.params)
    with registry.locked():
        version = registry.get(version_id)
        try:
            registry.verify_hash(version)
        except RegistryError as exc:
            raise PromotionRefused(str(exc)) from exc
        verify_loads(version)
        report = GateReport.from_dict(version.metadata["gate"])
        production = registry.production()
        if production == version.id:
            return {"version": version.id, "changed": False}
        if production != report.champion:
            report = rejudge(version, registry, params.gate, params.evaluate.min_slice_rows)
            log.info(
                "production changed since %s was judged; judged again against %s: %s",
                version.id,
                production,
                "passed" if report.passed else "failed",
            )
        if not report.passed and not force_reason:
            raise PromotionRefused(
                f"version {version.id} did not pass the gate; promoting it anyway takes "
                f"--force with a --reason.\n{report.summary()}"
            )
        save_to_bentoml(version)  # before the pointer moves: a failure here leaves production as it was
        event = {
            "event": "promoted",
            "gate_passed": report.passed,
            "forced": bool(force_reason and not report.passed),
            "reason": force_reason,
            "gate": report.to_dict(),
        }
        state = registry.set_production(version.id, event)
    return {
        "version": version.id,
        "changed": True,
        "previous": state["previous"][-1:] or None,
        "forced": event["forced"],
    }


def rollback(paths: ProjectPaths, registry: Registry, reason: str) -> tuple[str, str]:
    with registry.locked():
        state = registry.pointer_state()
        if state.get("previous"):
            target = registry.get(state["previous"][-1])
            try:
                registry.verify_hash(target)
            except RegistryError as exc:
                raise PromotionRefused(f"cannot roll back to {target.id}: {exc}") from exc
            save_to_bentoml(target)
        old, new = registry.rollback(reason)
    return old, new
