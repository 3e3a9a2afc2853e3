"""From the pipeline's outputs to the registry: register a candidate, judge it, promote, roll back.

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
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from loopline.atomic import write_json
from loopline.config import GateParams, load_params
from loopline.errors import LooplineError
from loopline.paths import ProjectPaths
from loopline.registry import BENTO_MODEL_NAME, CARD_FILE, METADATA_FILE, MODEL_FILE, Registry, RegistryError, Version, now, sha256_file
from loopline.runtime import EXPECTED_FILE, GOLDEN_FILE, predict_frame, reproduces_golden
from loopline.schema import FeatureSchema, schema_from_dict
from models.evaluate import metrics_by_slice
from models.gate import Evidence, GateReport, judge
from models.inference import MODEL_FILES
from loopline.metrics import task_metrics

log = logging.getLogger(__name__)

PACKAGES = ("torch", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy", "pandas", "scikit-learn", "dvc", "bentoml")
# Files a version keeps beside model.onnx, so that it can be re-checked and re-judged on its own.
SCHEMA_FILE, TEST_ROWS_FILE = "schema.json", "test.parquet"
REFERENCE_FILE = "reference.parquet"
"""The training split the model learned from: monitoring's reference for drift."""


class PromotionRefused(LooplineError):
    pass


# ------------------------------------------------------------------------------- scoring with ONNX
def onnx_predict_file(model_file: Path, frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    from models.export import onnx_session

    return predict_frame(onnx_session(model_file), frame, schema)


def version_schema(version: Version) -> FeatureSchema:
    """The feature schema a registered version was trained on."""
    path = version.file(SCHEMA_FILE)
    return schema_from_dict(json.loads(path.read_text()), source=str(path))


def score_version(version: Version, frame: pd.DataFrame, schema: FeatureSchema, slice_columns: list[str],
                  min_slice_rows: int) -> tuple[dict[str, float], dict[str, Any]] | None:
    """A registered model's metrics on the given rows, overall and per slice; None if it cannot score
    them (another task or target, or feature columns it needs are missing)."""
    from loopline.features import encode_target

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
    missing = [p for p in (paths.onnx_file, paths.golden_expected, paths.evaluate_metrics, paths.evaluate_slices,
                           paths.model_dir / MODEL_FILES["training"]) if not p.is_file()]
    if missing:
        raise PromotionRefused(f"no complete candidate: {[str(p) for p in missing]} missing; run `dvc repro` first")
    schema_path = paths.model_dir / MODEL_FILES["schema"]
    return Candidate(
        onnx_file=paths.onnx_file,
        schema=schema_from_dict(json.loads(schema_path.read_text()), source=str(schema_path)),
        test=pd.read_parquet(paths.split("test")),
        metrics=_json(paths.evaluate_metrics),
        slices=_json(paths.evaluate_slices),
        training=_json(paths.model_dir / MODEL_FILES["training"]),
        parity=_json(paths.export_report),
    )


def gather_evidence(cand_metrics: dict[str, Any], slices: dict[str, Any], checks: list | None,
                    parity: dict | None, onnx_sha: str, schema: FeatureSchema, test: pd.DataFrame,
                    registry: Registry, min_slice_rows: int) -> Evidence:
    baselines = {k: v for k, v in cand_metrics.items() if k not in ("model", "rows")}
    ev = Evidence(metrics=cand_metrics["model"], slices=slices, baselines=baselines, checks=checks,
                  parity=parity, onnx_sha256=onnx_sha)
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


# -------------------------------------------------------------------------------------- lineage
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


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def lineage(paths: ProjectPaths, cand: Candidate, report: GateReport) -> dict[str, Any]:
    params = yaml.safe_load(paths.params.read_text()) or {}
    dirty = _git(paths.root, "status", "--porcelain", "--untracked-files=no")
    return {
        "schema": cand.schema.name, "task": cand.schema.task.value, "target": cand.schema.target,
        "data": data_version(paths),
        "params": params, "seed": params.get("seed"),
        "git": {"commit": _git(paths.root, "rev-parse", "HEAD"), "dirty": bool(dirty) if dirty is not None else None},
        "packages": package_versions(),
        "metrics": cand.metrics, "slices": cand.slices,
        "training": _without_histories(cand.training),
        "checks": cand.training.get("checks"),
        "skipped_checks": cand.training.get("skipped_checks", []),
        "parity": cand.parity,
        "gate": report.to_dict(),
    }


HELD_OUT = {
    "time": "a held-out split later in time than its training data",
    "group": "a held-out split of groups it never saw in training",
    "random": "a held-out split of rows drawn at random from the same period as its training data",
}


def split_method(meta: dict[str, Any]) -> str:
    """How the version's data was split, from its lineage's params (params.yaml's default if unset)."""
    from loopline.config import SplitParams

    return (((meta.get("params") or {}).get("prepare") or {}).get("split") or {}).get("method") or SplitParams().method


def model_card(version_id: str, meta: dict[str, Any], schema: FeatureSchema) -> str:
    m = meta["metrics"]
    names = [k for k in m["model"]]
    rows = [f"| {who} | " + " | ".join(f"{m[who].get(n, float('nan')):.4g}" for n in names) + " |"
            for who in m if who != "rows"]
    gate = meta["gate"]
    features = "\n".join(f"| `{c.name}` | {c.kind.value} | {'yes' if c.nullable else 'no'} | {c.description or ''} |"
                         for c in schema.features)
    failed = [r for r in gate["rules"] if not r["passed"]]
    git = meta["git"]
    return f"""# Model card: {schema.name} {version_id}

- **Task**: {schema.task.value} on `{schema.target}`
- **Registered**: {meta.get('registered_at', now())}
- **Gate**: {'passed' if gate['passed'] else 'FAILED'} ({len(gate['rules']) - len(failed)} of {len(gate['rules'])} rules){'; champion ' + gate['champion'] if gate['champion'] else '; first model, no champion'}
- **Code**: git {git['commit'] or 'unknown'}{' (uncommitted changes)' if git['dirty'] else ''}
- **Data**: {', '.join(f'{k} {v}' for k, v in meta['data'].get('outs', {}).items()) or 'no dvc.lock'}
- **Seed**: {meta['seed']}; skipped recipe checks: {meta['skipped_checks'] or 'none'}

## Intended use
Predicts `{schema.target}` for rows shaped like the schema below, through Loopline's HTTP service.
It was evaluated on {HELD_OUT[split_method(meta)]}; watch the drift reports before trusting it on
data unlike that.

## Test metrics ({m['rows']} rows), next to the baselines
| model | {' | '.join(names)} |
|---|{'---:|' * len(names)}
{chr(10).join(rows)}

## Gate rules that failed
{chr(10).join(f"- `{r['name']}`: {r['value']} vs {r['threshold']} {r['detail']}" for r in failed) or 'none'}

## Inputs
| feature | kind | nullable | description |
|---|---|---|---|
{features}

## Training
{json.dumps(meta['training'], indent=2, default=str)}
"""


# ------------------------------------------------------------------------------ register, promote
def _without_histories(training: dict[str, Any]) -> dict[str, Any]:
    """training.json for the model card: settings and outcomes, not per-epoch histories or check details."""
    out = {k: v for k, v in training.items() if k not in ("history", "checks", "ensemble")}
    if "ensemble" in training:
        out["ensemble"] = [{k: v for k, v in member.items() if k != "history"} for member in training["ensemble"]]
    return out


def register_candidate(paths: ProjectPaths, registry: Registry) -> tuple[Version, GateReport, bool]:
    params = load_params(paths.params)
    cand = load_candidate(paths)
    sha = sha256_file(cand.onnx_file)
    ev = gather_evidence(cand.metrics, cand.slices, cand.training.get("checks"), cand.parity, sha, cand.schema,
                         cand.test, registry, params.evaluate.min_slice_rows)
    report = judge(params.gate, ev)
    meta = lineage(paths, cand, report)
    staging = paths.state_dir / "registry-staging"
    staging.mkdir(parents=True, exist_ok=True)
    cand.test.to_parquet(staging / TEST_ROWS_FILE, index=False)
    files = {SCHEMA_FILE: paths.model_dir / MODEL_FILES["schema"], GOLDEN_FILE: paths.golden_batch,
             EXPECTED_FILE: paths.golden_expected, TEST_ROWS_FILE: staging / TEST_ROWS_FILE,
             REFERENCE_FILE: paths.split("train")}
    version, created = registry.register(cand.onnx_file, files, meta, model_card(sha[:16], meta, cand.schema))
    report = report if created else GateReport.from_dict(version.metadata["gate"])
    write_json(paths.gate_verdict, {"version": version.id, **report.to_dict()})
    return version, report, created


def verify_loads(version: Version) -> None:
    """The file loads in ONNX Runtime and reproduces its golden batch."""
    from models.export import ExportError, onnx_session

    try:
        ok = reproduces_golden(onnx_session(version.model), version.path, version_schema(version))
    except ExportError as exc:
        raise PromotionRefused(str(exc)) from exc
    except Exception as exc:  # onnxruntime raises its own types on a broken graph or input
        raise PromotionRefused(f"{version.model}: ONNX Runtime cannot run the model: {exc}") from exc
    if not ok:
        raise PromotionRefused(f"{version.model}: ONNX Runtime's predictions on the golden batch differ from "
                               "the ones recorded at registration")


def rejudge(version: Version, registry: Registry, rules: GateParams | None, min_slice_rows: int) -> GateReport:
    """The gate again, from the version's own records, against the current production model."""
    meta = version.metadata
    schema = version_schema(version)
    test = pd.read_parquet(version.file(TEST_ROWS_FILE))
    checks = meta.get("checks")
    ev = gather_evidence(meta["metrics"], meta["slices"], checks, meta.get("parity"), meta["sha256"], schema, test,
                         registry, min_slice_rows)
    return judge(rules, ev)


def promote(paths: ProjectPaths, registry: Registry, version_id: str, *, force_reason: str | None = None) -> dict[str, Any]:
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
            log.info("production changed since %s was judged; judged again against %s: %s",
                     version.id, production, "passed" if report.passed else "failed")
        if not report.passed and not force_reason:
            raise PromotionRefused(f"version {version.id} did not pass the gate; promoting it anyway takes "
                                   f"--force with a --reason.\n{report.summary()}")
        save_to_bentoml(version)  # before the pointer moves: a failure here leaves production as it was
        event = {"event": "promoted", "gate_passed": report.passed, "forced": bool(force_reason and not report.passed),
                 "reason": force_reason, "gate": report.to_dict()}
        state = registry.set_production(version.id, event)
    return {"version": version.id, "changed": True, "previous": state["previous"][-1:] or None,
            "forced": event["forced"]}


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


STORE_FILES = (MODEL_FILE, SCHEMA_FILE, CARD_FILE, METADATA_FILE, GOLDEN_FILE, EXPECTED_FILE)
"""What a version takes into BentoML's model store: what serving loads and checks."""


def store_differences(version: Version) -> list[str] | None:
    """The files of BentoML's copy of a version that differ from the registry's (missing ones too);
    None when the store has no copy."""
    import bentoml

    try:
        stored = bentoml.models.get(f"{BENTO_MODEL_NAME}:{version.id}")
    except bentoml.exceptions.NotFound:
        return None
    differ = []
    for name in STORE_FILES:
        copy = Path(stored.path_of(name))
        if not copy.is_file() or copy.read_bytes() != version.file(name).read_bytes():
            differ.append(name)
    return differ


def save_to_bentoml(version: Version) -> str:
    """The version in BentoML's model store as loopline:<version>, for `bentoml build` and serving. A
    store copy that differs from the registry's bytes (altered, truncated, half-written) is saved again."""
    import bentoml

    tag = f"{BENTO_MODEL_NAME}:{version.id}"
    differ = store_differences(version)
    if differ == []:
        return tag
    if differ:
        log.warning("BentoML's store copy of %s differs from the registry in %s: saving it again", version.id, differ)
        bentoml.models.delete(tag)
    meta = version.metadata
    with bentoml.models.create(tag,
                               labels={"schema": meta["schema"], "task": meta["task"]},
                               metadata={"sha256": meta["sha256"], "gate_passed": meta["gate"]["passed"]}) as model:
        for name in STORE_FILES:
            Path(model.path_of(name)).write_bytes(version.file(name).read_bytes())
    return tag


@dataclass
class VerifyReport:
    problems: list[str]
    """What is wrong and could not be repaired (a registry file altered, a pointer to nothing)."""
    repaired: list[str]
    checked: int

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_release(registry: Registry) -> VerifyReport:
    """Registry, production pointer and BentoML's store agree: every version's file matches its hash,
    the pointer and its rollback stack name intact versions, and the store's copy of each of those is
    byte-identical to the registry's, re-saved from the registry where it is not."""
    problems: list[str] = []
    repaired: list[str] = []
    intact: dict[str, Version] = {}
    versions = registry.list()
    for version in versions:
        try:
            registry.verify_hash(version)
            intact[version.id] = version
        except RegistryError as exc:
            problems.append(str(exc))
    state = registry.pointer_state()
    servable = [v for v in [state.get("version"), *state.get("previous", [])] if v]
    for version_id in servable:
        if version_id not in intact:
            known = any(v.id == version_id for v in versions)
            problems.append(f"{registry.pointer}: names {version_id}, which is "
                            f"{'altered in the registry (see above)' if known else 'not in the registry'}")
            continue
        differ = store_differences(intact[version_id])
        if differ is None:
            continue  # not in the store yet: promotion or rollback saves it
        if differ:
            with registry.locked():
                save_to_bentoml(intact[version_id])
            repaired.append(f"{BENTO_MODEL_NAME}:{version_id}: store copy differed in {', '.join(differ)}; "
                            "saved again from the registry")
    return VerifyReport(problems, repaired, len(versions))
