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
from loopline.evidence import Comparison, compare_paired, row_errors
from loopline.features import encode_target
from loopline.metrics import metrics_by_slice, task_metrics
from loopline.paths import MODEL_FILES, ProjectPaths
from loopline.registry import (
    EXPECTED_FILE,
    GOLDEN_FILE,
    REFERENCE_FILE,
    SCHEMA_FILE,
    TEST_PREDICTIONS_FILE,
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


def paired_comparisons(
    candidate: np.ndarray,
    champion: np.ndarray,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    slice_columns: list[str],
    min_slice_rows: int,
    confidence: float,
) -> dict[str, Comparison]:
    """The candidate's per-row error against the champion's on the same rows: overall at `confidence`,
    and on each slice of at least `min_slice_rows` rows at the familywise confidence: each of k slices
    at 1 - (1 - confidence) / k (Bonferroni), so that sampling noise alone makes some slice fail no more
    often than it makes the overall comparison fail, however many slices there are."""
    y = encode_target(frame, schema)
    task = schema.task.value
    mine, theirs = row_errors(task, y, candidate), row_errors(task, y, champion)
    out = {"overall": compare_paired(mine, theirs, confidence=confidence)}
    slices = [
        (f"{column}={value}", index)
        for column in (c for c in slice_columns if c in frame.columns)
        for value, index in frame.groupby(column, observed=True).indices.items()
        if len(index) >= min_slice_rows
    ]
    each = 1 - (1 - confidence) / max(len(slices), 1)
    for key, index in slices:
        out[key] = compare_paired(mine[index], theirs[index], confidence=each)
    return out


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
    test_outputs: np.ndarray
    """The judged network's outputs on the test rows (evaluate's test_predictions.parquet)."""


def load_candidate(paths: ProjectPaths) -> Candidate:
    missing = [
        p
        for p in (
            paths.onnx_file,
            paths.golden_expected,
            paths.evaluate_metrics,
            paths.evaluate_slices,
            paths.test_predictions,
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
        test_outputs=read_outputs(paths.test_predictions),
    )


def read_outputs(path: Path) -> np.ndarray:
    """Outputs written by models.evaluate.prediction_frame: values, P(class 1), or class probabilities."""
    frame = pd.read_parquet(path)
    return frame["output"].to_numpy() if list(frame.columns) == ["output"] else frame.to_numpy()


def test_outputs(version: Version) -> np.ndarray:
    """A version's judged outputs on its test rows (its ONNX model's, for a version registered before
    they were stored: it then learned none of them)."""
    if version.file(TEST_PREDICTIONS_FILE).is_file():
        return read_outputs(version.file(TEST_PREDICTIONS_FILE))
    test = pd.read_parquet(version.file(TEST_ROWS_FILE))
    return onnx_predict_file(version.model, test, version_schema(version))


def learned_until(version: Version) -> pd.Timestamp | None:
    """The newest time a version's served model learned from, for a time-split schema: the end of its
    test split when it was refit on it (train.refit: all), else the start (its train and val rows came
    before). None without a time column."""
    schema = version_schema(version)
    column = schema.time_column
    if column is None:
        return None
    times = pd.to_datetime(pd.read_parquet(version.file(TEST_ROWS_FILE), columns=[column])[column])
    refit_on = version.metadata.get("training", {}).get("refit_on", "train")
    return times.max() if "test" in refit_on else times.min()


def gather_evidence(
    cand_metrics: dict[str, Any],
    slices: dict[str, Any],
    checks: list | None,
    parity: dict | None,
    model_file: Path,
    schema: FeatureSchema,
    test: pd.DataFrame,
    outputs: np.ndarray,
    registry: Registry,
    min_slice_rows: int,
    rules: GateParams | None,
    champion: str | None = None,
    like_holdout: bool = False,
) -> Evidence:
    """What the gate judges: the candidate's records, and the champion (`champion`, default the
    production model) beside the candidate's judged `outputs` on the same test rows, neither judged
    on rows it learned (`champion_outputs`; `like_holdout`: the candidate was refit on its test rows,
    so its judged outputs are its holdout network's)."""
    baselines = {k: v for k, v in cand_metrics.items() if k not in ("model", "rows")}
    ev = Evidence(
        metrics=cand_metrics["model"],
        slices=slices,
        baselines=baselines,
        checks=checks,
        parity=parity,
        onnx_sha256=sha256_file(model_file),
    )
    champion = champion or registry.production()
    if champion is not None:
        ev.champion = champion
        try:
            found = champion_outputs(registry.get(champion), test, schema, like_holdout=like_holdout)
        except LooplineError as exc:
            log.warning("production model %s cannot be scored: %s", champion, exc)
            found = None
        if found is not None:
            rows, champion_pred = found
            ev.champion_rows = int(rows.sum())
            if rows.any():
                y = encode_target(test[rows], schema)
                present = [c for c in slices if c in test.columns]
                task = schema.task.value
                ev.champion_metrics = task_metrics(task, y, champion_pred)
                ev.champion_slices = metrics_by_slice(test[rows], y, champion_pred, task, present, min_slice_rows)
                ev.champion_comparisons = paired_comparisons(
                    np.asarray(outputs)[rows],
                    champion_pred,
                    test[rows],
                    schema,
                    list(slices),
                    min_slice_rows,
                    rules.champion_confidence if rules else 0.9,
                )
    return ev


def shared_rows(
    test: pd.DataFrame, their_test: pd.DataFrame, their_outputs: np.ndarray, schema: FeatureSchema
) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of `test` are also (once) in `their_test`, matched on features, target and time, and
    their outputs there in `test`'s order."""
    keys = [c.name for c in schema.features] + [schema.target] + ([schema.time_column] if schema.time_column else [])
    if any(k not in their_test.columns or k not in test.columns for k in keys):
        return np.zeros(len(test), dtype=bool), np.empty(0)
    theirs = their_test[keys].assign(_position=np.arange(len(their_test))).drop_duplicates(keys, keep=False)
    joined = test[keys].reset_index(drop=True).merge(theirs, on=keys, how="left")
    rows = joined["_position"].notna().to_numpy()
    return rows, np.asarray(their_outputs)[joined.loc[rows, "_position"].astype(int).to_numpy()]


def champion_outputs(
    version: Version, test: pd.DataFrame, schema: FeatureSchema, *, like_holdout: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """Which of the candidate's test rows the champion can be compared on, and its outputs there, from a
    network that did not learn them either: with `like_holdout` (the candidate's judged outputs are its
    holdout network's), the champion's own judged outputs on the test rows both share; otherwise its
    served model on the rows newer than anything it learned. None: it cannot score these rows."""
    champion_schema = version_schema(version)
    if champion_schema.task != schema.task or champion_schema.target != schema.target:
        return None
    if any(c.name not in test.columns for c in champion_schema.features):
        return None
    if like_holdout:
        return shared_rows(test, pd.read_parquet(version.file(TEST_ROWS_FILE)), test_outputs(version), schema)
    rows = np.ones(len(test), dtype=bool)
    until = learned_until(version)
    if until is not None:
        rows = (pd.to_datetime(test[schema.time_column]) > until).to_numpy()
    return rows, onnx_predict_file(version.model, test[rows], champion_schema)


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
        cand.onnx_file,
        cand.schema,
        cand.test,
        cand.test_outputs,
        registry,
        params.evaluate.min_slice_rows,
        params.gate,
        like_holdout="test" in cand.training.get("refit_on", "train"),
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
        TEST_PREDICTIONS_FILE: paths.test_predictions,
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


def rejudge(
    version: Version, registry: Registry, rules: GateParams | None, min_slice_rows: int, champion: str | None = None
) -> GateReport:
    """The gate again, from the version's own records, against `champion` (default: the current
    production model)."""
    meta = version.metadata
    schema = version_schema(version)
    test = pd.read_parquet(version.file(TEST_ROWS_FILE))
    checks = meta.get("checks")
    ev = gather_evidence(
        meta["metrics"],
        meta["slices"],
        checks,
        meta.get("parity"),
        version.model,
        schema,
        test,
        test_outputs(version),
        registry,
        min_slice_rows,
        rules,
        champion,
        like_holdout="test" in meta.get("training", {}).get("refit_on", "train"),
    )
    return judge(rules, ev)


def servable(registry: Registry, version_id: str) -> Version:
    """The version, once its file matches its hash and it loads and reproduces its golden batch."""
    version = registry.get(version_id)
    try:
        registry.verify_hash(version)
    except RegistryError as exc:
        raise PromotionRefused(str(exc)) from exc
    verify_loads(version)
    return version


def start_shadow(registry: Registry, version_id: str, role: str, event: dict[str, Any]) -> None:
    """Have the service score a version in shadow (`role`: challenger or previous): the same checks as a
    promotion (hash, loads, golden batch), into BentoML's store, then into the pointer's shadow set."""
    with registry.locked():
        version = servable(registry, version_id)
        save_to_bentoml(version)
        registry.set_shadow(version.id, role, {"event": "shadow", **event})


def end_shadow(registry: Registry, version_id: str, event: dict[str, Any]) -> None:
    with registry.locked():
        registry.set_shadow(version_id, None, {"event": "shadow ended", **event})


def promote(
    paths: ProjectPaths,
    registry: Registry,
    version_id: str,
    *,
    force_reason: str | None = None,
    live: dict[str, Any] | None = None,
    watch_previous: bool | None = None,
) -> dict[str, Any]:
    """Point production at a version that passed the gate (or with `force_reason`). `live`: the live
    evidence that decided it, recorded with the event; `watch_previous` (default: promote.rollback): the
    replaced model is scored in shadow afterwards, so that a worse promotion is noticed and rolled back
    on live labels."""
    params = load_params(paths.params)
    if watch_previous is None:
        watch_previous = params.promote.rollback
    with registry.locked():
        version = servable(registry, version_id)
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
            **({"live": live} if live else {}),
        }
        state = registry.set_production(version.id, event)
        registry.set_shadow(version.id, None, {"event": "shadow ended", "reason": "promoted"})
        if watch_previous and production:
            for older, role in registry.shadows().items():
                if role == "previous":
                    registry.set_shadow(older, None, {"event": "shadow ended", "reason": "a newer promotion"})
            registry.set_shadow(production, "previous", {"event": "shadow", "reason": f"replaced by {version.id}"})
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
        registry.set_shadow(new, None, {"event": "shadow ended", "reason": "rolled back to"})
    return old, new
