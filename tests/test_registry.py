"""From `dvc repro` through evaluation and export to the registry, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import Project, new_project
from loopline.paths import ProjectPaths
from loopline.registry import Registry
from models.promote import PromotionRefused, promote

FAST_TRAIN = {"checks": {"skip": ["input_independent_baseline"]}}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Project, str, str, Path]:
    """A project whose pipeline ran twice (two different models), both registered, none promoted."""
    proj = new_project(tmp_path_factory.mktemp("registry"))
    proj.set_params(train=FAST_TRAIN)
    proj.dvc("repro")
    first = registered_id(proj.loopline("register").stdout)
    proj.set_params(train={**FAST_TRAIN, "model": {"hidden": [32]}})
    proj.dvc("repro")
    second = registered_id(proj.loopline("register").stdout)
    assert first != second
    seed = proj.root.parent / "seed-registry"
    shutil.move(proj.root / "registry", seed)
    return proj, first, second, seed


@pytest.fixture
def project(built) -> Project:
    """The built project with a fresh copy of the two-version registry."""
    proj, _, _, seed = built
    shutil.rmtree(proj.root / "registry", ignore_errors=True)
    shutil.copytree(seed, proj.root / "registry")
    return proj


def registered_id(output: str) -> str:
    return output.splitlines()[0].split(": ")[1]


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
    assert {"predicted_vs_actual.png", "residuals.png"} <= {p.name for p in proj.path("reports/evaluate/plots").iterdir()}

    parity = json.loads(proj.path("reports/export/parity.json").read_text())
    assert parity["passed"] and parity["rows_out_of_tolerance"] == 0 and parity["rows"] > 64
    model = onnx.load(str(proj.path("artifacts/onnx/model.onnx")))
    onnx.checker.check_model(model, full_check=True)
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][0] == "batch"
    assert sorted(p.name for p in proj.path("artifacts/onnx").iterdir()) == ["golden.json", "model.onnx"]
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
    procs = [subprocess.Popen([sys.executable, "-m", "models.cli", "promote", v, "--force", "--reason", "race"],
                              cwd=project.root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for v in (first, second)]
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


def test_bentoml_serves_the_production_model_behind_its_guards(project: Project, built) -> None:
    import socket
    import time
    import urllib.error
    import urllib.request

    first = built[1]
    project.loopline("promote", first)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bentoml = str(Path(sys.executable).parent / "bentoml")
    request_log, ground_truth = project.root / "request-log", project.root / "ground-truth"
    env = {**project.env(), "LOOPLINE_API_KEY": "s3cret", "LOOPLINE_MAX_BODY_BYTES": "100000",
           "LOOPLINE_REQUEST_LOG": str(request_log), "LOOPLINE_GROUND_TRUTH": str(ground_truth),
           "LOOPLINE_REQUEST_LOG_FLUSH_SECONDS": "0.2"}
    server = subprocess.Popen([bentoml, "serve", "serving.service:Predictor", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    key = {"authorization": "Bearer s3cret"}

    def post(path: str, body, headers: dict[str, str]) -> tuple[int, dict, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data, headers={"content-type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2):  # probes need no key
                    break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.5)
        test = project.read_parquet("data/prepared/test.parquet").head(5)
        features = [c for c in json.loads(project.path(f"registry/versions/{first}/schema.json").read_text())["columns"]
                    if c not in ("timestamp", "cnt")]
        records = json.loads(test[features].to_json(orient="records"))

        with urllib.request.urlopen(urllib.request.Request(base + "/metadata", headers=key), timeout=30) as response:
            info = json.loads(response.read())
        assert info["model_version"] == first and info["providers"] == ["CPUExecutionProvider"]
        assert info["model"]["sha256"].startswith(first) and info["model"]["gate"]["passed"] is True
        assert info["model"]["metrics"]["model"]["mae"] > 0 and info["schema"]["target"] == "cnt"

        status, body, headers = post("/predict", {"records": records}, {**key, "x-request-id": "req-42"})
        assert status == 200 and body["model_version"] == first and len(body["predictions"]) == 5
        assert body["request_id"] == "req-42" and headers["x-request-id"] == "req-42"
        served = body["predictions"]
        truth = test["cnt"].tolist()
        status, body, _ = post("/feedback", {"labels": [{"request_id": "req-42", "record": i, "value": int(v)}
                                                        for i, v in enumerate(truth)]}, key)
        assert status == 200 and body == {"accepted": 5}
        status, body, _ = post("/feedback", {"labels": [{"request_id": "req-42", "value": "many"}]}, key)
        assert status == 400 and [tuple(d["loc"]) for d in body["detail"]] == [("labels", 0, "value")]

        status, body, _ = post("/predict", {"records": [{**records[0], "season": "monsoon", "colour": "red"}]}, key)
        assert status == 400
        assert {tuple(d["loc"]) for d in body["detail"]} == {("records", 0, "season"), ("records", 0, "colour")}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            status, body, _ = post("/predict", {"records": records}, headers)
            assert status == 401 and "API key" in body["error"]
        status, body, _ = post("/predict", b"x" * 200_000, key)
        assert status == 413 and "over 100000 bytes" in body["error"]
        status, body, _ = post("/predict", b"not json", key)
        assert status == 400 and body["detail"][0]["type"] == "json_invalid"
    finally:
        server.terminate()
        server.wait(timeout=30)

    # Only the accepted request reached the model; its five records are in the log as they were sent.
    import pandas as pd

    logged = pd.concat(pd.read_parquet(f) for f in sorted(request_log.rglob("*.parquet"))).sort_values("record")
    assert logged["request_id"].tolist() == ["req-42"] * 5 and logged["record"].tolist() == list(range(5))
    assert (logged["model_version"] == first).all()
    assert logged["prediction"].tolist() == pytest.approx(served)
    for column in ("temp", "hum", "windspeed"):
        assert logged[column].tolist() == pytest.approx([r[column] for r in records])
    assert logged["season"].tolist() == [r["season"] for r in records]
    assert not list(request_log.rglob(".*.tmp"))
    labels = pd.concat(pd.read_parquet(f) for f in sorted(ground_truth.rglob("*.parquet")))
    joined = logged.merge(labels, on=["request_id", "record"])
    assert len(joined) == 5 and joined["cnt"].tolist() == pytest.approx(truth)


def test_a_promotion_under_load_swaps_the_model_without_a_failed_request(project: Project, built) -> None:
    import socket
    import threading
    import time
    import urllib.request

    _, first, second, _ = built
    project.loopline("promote", first)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bentoml = str(Path(sys.executable).parent / "bentoml")
    env = {**project.env(), "LOOPLINE_REQUEST_LOG": "off", "LOOPLINE_SWAP_POLL_SECONDS": "0.3"}
    server_log = project.root / "server.log"
    server = subprocess.Popen([bentoml, "serve", "serving.service:Predictor", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=project.root, env=env, stdout=server_log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    test = project.read_parquet("data/prepared/test.parquet").head(3)
    features = [c for c in json.loads(project.path(f"registry/versions/{first}/schema.json").read_text())["columns"]
                if c not in ("timestamp", "cnt")]
    payload = json.dumps({"records": json.loads(test[features].to_json(orient="records"))}).encode()
    results: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            request = urllib.request.Request(base + "/predict", data=payload, headers={"content-type": "application/json"})
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    version = json.loads(response.read())["model_version"]
                    results.append((sent, time.monotonic(), response.status, version))
            except Exception as exc:  # any failure counts against the swap
                results.append((sent, time.monotonic(), getattr(exc, "code", 0), repr(exc)))

    def versions_since(t: float) -> set[str]:
        """Versions that answered requests sent after t."""
        return {v for sent, _, _, v in results if sent > t}

    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2):
                    break
            except OSError:
                assert server.poll() is None
                time.sleep(0.5)
        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        project.loopline("promote", second, "--force", "--reason", "swap under load")
        promoted_at = time.monotonic()
        while versions_since(promoted_at + 2.0) != {second} and time.monotonic() < promoted_at + 30:
            time.sleep(0.2)
        # A production pointer to a model that cannot be loaded: the service keeps serving the last good one.
        registry = Registry(project.root / "registry")
        with registry.locked():
            registry.set_production("0" * 16, {"event": "promoted", "reason": "test: a broken model"})
        broken_at = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=60)
        server.terminate()
        server.wait(timeout=30)

    assert results and all(status == 200 for _, _, status, _ in results), [r for r in results if r[2] != 200][:3]
    assert {v for *_, v in results} == {first, second}
    # Once one answer came from the new model, every request sent after it is answered by the new model;
    # requests in flight at the swap may finish on the old one.
    swapped = min(answered for _, answered, _, v in results if v == second)
    assert versions_since(swapped) == {second}
    assert versions_since(broken_at + 1.0) == {second}
    assert f"still serving {second}: production model {'0' * 16} failed to load or check" in server_log.read_text()
