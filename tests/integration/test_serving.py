"""The HTTP service, started as a user starts it (`bentoml serve` on 127.0.0.1), over real models."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pytest

from conftest import Project, Server, feature_records, new_project, registered_id, reset_registry, serving
from loopline.registry import Registry
from loopline.runtime import read_golden
from serving.arrow import ARROW_STREAM, encode_table

KEY = {"authorization": "Bearer s3cret"}


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


MAX_RECORDS = 50


@pytest.fixture(scope="module")
def bike(built, tmp_path_factory):
    """The first bike model in production, served with an API key, a 100 kB body limit, at most 50
    records a request, and the request log and ground truth written to the project."""
    project = reset_registry(built)
    first = built[1]
    project.loopline("promote", first)
    logs = tmp_path_factory.mktemp("served")
    env = {
        "LOOPLINE_API_KEY": "s3cret",
        "LOOPLINE_MAX_BODY_BYTES": "100000",
        "LOOPLINE_MAX_RECORDS": str(MAX_RECORDS),
        "LOOPLINE_REQUEST_LOG": str(logs / "requests"),
        "LOOPLINE_GROUND_TRUTH": str(logs / "ground-truth"),
        "LOOPLINE_REQUEST_LOG_FLUSH_SECONDS": "0.2",
    }
    with serving(project, log=logs / "server.log", **env) as server:
        records, rows = feature_records(project, first, 5)
        yield server, first, records, rows, logs


def test_predict_answers_with_the_production_version_and_echoes_the_request_id(bike) -> None:
    server, first, records, _, _ = bike
    status, body, headers = server.post("/predict", {"records": records}, {**KEY, "x-request-id": "req-1"})
    assert status == 200 and body["model_version"] == first and len(body["predictions"]) == 5
    assert all(isinstance(p, float) and p >= 0 for p in body["predictions"])
    assert body["request_id"] == "req-1" and headers["x-request-id"] == "req-1"
    status, body, headers = server.post("/predict", {"records": records[:1]}, KEY)
    assert status == 200 and len(body["request_id"]) == 32 and headers["x-request-id"] == body["request_id"]


def test_loopline_score_answers_as_the_service_does_and_rejects_bad_rows_with_reasons(bike, built) -> None:
    """A CSV scored offline in chunks: the good rows' predictions are the service's answers for the same
    records, an id column is carried through, bad rows go to the rejects file with the column named."""
    server, first, _, _, logs = bike
    project = built[0]
    records, _ = feature_records(project, first, 40)
    table = pd.DataFrame(records).assign(ride_id=[f"r{i}" for i in range(40)])
    table.loc[3, "temp"] = 99.0  # above the schema's maximum
    table.loc[7, "season"] = "monsoon"
    table["hum"] = table["hum"].astype(object)
    table.loc[11, "hum"] = "humid"
    source = logs / "to-score.csv"
    table.to_csv(source, index=False)
    out = logs / "scored.parquet"
    done = project.loopline("score", str(source), str(out), "--chunk-rows", "16", "--no-progress")
    summary = json.loads(done.stdout)
    assert (summary["rows"], summary["scored"], summary["rejected"]) == (40, 37, 3)
    scored = pd.read_parquet(out)
    assert list(scored["source_row"]) == [i for i in range(40) if i not in (3, 7, 11)]
    assert list(scored["ride_id"]) == [f"r{i}" for i in scored["source_row"]]
    good = [records[i] for i in scored["source_row"]]
    status, body, _ = server.post("/predict", {"records": good}, KEY)
    assert status == 200 and scored["prediction"].tolist() == pytest.approx(body["predictions"], rel=1e-6)
    rejects = pd.read_parquet(logs / "scored.rejects.parquet").set_index("source_row")
    assert rejects.loc[3, "reasons"] == "temp: above the maximum 50"
    assert rejects.loc[7, "reasons"].startswith("season: not one of the categories")
    assert rejects.loc[11, "reasons"] == "hum: not a number" and rejects.loc[11, "ride_id"] == "r11"
    lineage = json.loads((logs / "scored.lineage.json").read_text())
    assert lineage["model"]["version"] == first and lineage["inputs"][0]["rows"] == 40
    # The `scoring` Prefect flow (embedded mode) wraps the same function: the same answers, as CSV.
    project.run(sys.executable, "-m", "flows.scoring", str(source), str(logs / "scored.csv"))
    as_csv = pd.read_csv(logs / "scored.csv")
    assert as_csv["prediction"].tolist() == pytest.approx(scored["prediction"].tolist(), rel=1e-6)
    assert len(pd.read_csv(logs / "scored.rejects.csv")) == 3


def post_arrow(
    server: Server, body: bytes, accept: str = "application/json", **headers: str
) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(
        server.base + "/predict",
        data=body,
        method="POST",
        headers={"content-type": ARROW_STREAM, "accept": accept, **KEY, **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_an_arrow_body_gets_the_json_bodys_answers_and_is_logged(bike) -> None:
    server, first, records, _, logs = bike
    frame = pd.DataFrame(records)
    status, body, _ = server.post("/predict", {"records": records}, KEY)
    assert status == 200
    status, raw, headers = post_arrow(server, encode_table(frame), **{"x-request-id": "arrow-1"})
    answer = json.loads(raw)
    assert status == 200 and answer["model_version"] == first and headers["x-request-id"] == "arrow-1"
    assert answer["predictions"] == pytest.approx(body["predictions"], rel=1e-6)
    # Categories dictionary-encoded, as Arrow writers often send them, and an Arrow answer.
    encoded = pa.Table.from_pandas(frame, preserve_index=False)
    encoded = encoded.set_column(
        encoded.schema.get_field_index("season"), "season", encoded.column("season").dictionary_encode()
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, encoded.schema) as writer:
        writer.write_table(encoded)
    status, raw, headers = post_arrow(server, sink.getvalue().to_pybytes(), accept=ARROW_STREAM)
    table = pa.ipc.open_stream(raw).read_all()
    assert status == 200 and headers["content-type"] == ARROW_STREAM
    assert table.schema.metadata[b"model_version"].decode() == first
    assert table.column("prediction").to_pylist() == pytest.approx(body["predictions"], rel=1e-6)
    time.sleep(0.6)  # the request log flushes every 0.2 s here
    logged = pd.concat(pd.read_parquet(f) for f in (logs / "requests").rglob("*.parquet"))
    assert (logged["request_id"] == "arrow-1").sum() == len(records)


def test_a_bad_arrow_body_answers_400_naming_the_column_and_rows_never_5xx(bike) -> None:
    server, _, records, _, _ = bike
    frame = pd.DataFrame(records)
    whole = encode_table(frame)
    cases = {
        "wrong type": (encode_table(frame.assign(temp=frame["temp"].astype(str))), "temp", "wrong type"),
        "missing column": (encode_table(frame.drop(columns=["hum"])), "hum", "missing column"),
        "out of range": (encode_table(frame.assign(temp=[20.0, 99.0, 20.0, 99.0, 20.0])), "temp", "rows 1, 3"),
        "unknown column": (encode_table(frame.assign(colour="red")), "colour", "unknown column"),
        "not arrow": (b'{"records": []}', None, "not a whole Arrow IPC stream"),
        "truncated": (whole[: len(whole) // 2], None, "not a whole Arrow IPC stream"),
        "empty": (encode_table(frame.head(0)), None, "0 records"),
    }
    for case, (body, column, words) in cases.items():
        status, raw, _ = post_arrow(server, body)
        answer = json.loads(raw)
        assert status == 400, (case, answer)
        assert words in answer["error"], (case, answer)
        if column is not None:
            assert column in answer["error"] and answer["problems"][0]["field"] == column, (case, answer)
    assert post_arrow(server, whole, **{"content-type": "application/x-arrow-file"})[0] == 415


def test_a_request_id_that_feedback_could_never_name_is_refused(bike) -> None:
    server, _, records, _, _ = bike
    status, body, _ = server.post("/predict", {"records": records[:1]}, {**KEY, "x-request-id": "r" * 201})
    assert status == 400 and "X-Request-ID: at most 200 printable ASCII characters" in body["error"]
    status, body, _ = server.post("/predict", {"records": records[:1]}, {**KEY, "x-request-id": "r" * 200})
    assert status == 200 and body["request_id"] == "r" * 200


def test_a_client_that_disconnects_mid_body_is_one_info_line(bike) -> None:
    import socket

    server, _, _, _, logs = bike
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as conn:
        conn.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
            b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"records": ['
        )
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while "disconnected before sending the whole body" not in (logs / "server.log").read_text():
        assert time.monotonic() < deadline, (logs / "server.log").read_text()[-2000:]
        time.sleep(0.2)
    text = (logs / "server.log").read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text


def test_metadata_names_the_version_the_providers_in_use_the_lineage_and_the_schema(bike) -> None:
    server, first, *_ = bike
    status, info, _ = server.get("/metadata", KEY)
    assert status == 200 and info["model_version"] == first
    # The providers really in use: CUDA first where a usable GPU is present, the CPU always last.
    expected = (
        ["CUDAExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers() and torch_cuda_available()
        else []
    ) + ["CPUExecutionProvider"]
    assert info["providers"] == expected
    assert info["model"]["sha256"].startswith(first) and info["model"]["gate"]["passed"] is True
    assert info["model"]["metrics"]["model"]["mae"] > 0 and info["schema"]["target"] == "cnt"


def test_health_metrics_and_the_openapi_document_need_no_key(bike) -> None:
    import urllib.request

    server = bike[0]
    for path in ("/readyz", "/livez", "/metrics", "/docs.json"):
        with urllib.request.urlopen(server.base + path, timeout=10) as response:
            assert response.status == 200, path
    with urllib.request.urlopen(server.base + "/docs.json", timeout=10) as response:
        document = json.loads(response.read())
    record = document["components"]["schemas"]["bike_sharing_hourly_record"]
    assert record["additionalProperties"] is False and record["properties"]["temp"]["maximum"] == 50


def test_valid_json_takes_the_fast_path_and_bentomls_metrics_still_count_every_request(bike) -> None:
    import urllib.request

    server, first, records, _, _ = bike

    def predict_count() -> float:
        with urllib.request.urlopen(server.base + "/metrics", timeout=10) as response:
            text = response.read().decode()
        lines = [
            ln for ln in text.splitlines() if ln.startswith("bentoml_service_request_total") and '"/predict"' in ln
        ]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    def by_bentomls_api(headers: dict[str, str]) -> bool:  # its answers name it in the Server header
        return any(k.lower() == "server" and v.startswith("BentoML") for k, v in headers.items())

    before = predict_count()
    status, body, headers = server.post("/predict", {"records": records[:2]}, {**KEY, "x-request-id": "fast-1"})
    assert status == 200 and body["request_id"] == "fast-1" and headers["x-request-id"] == "fast-1"
    assert not by_bentomls_api(headers)  # answered in front of BentoML's API
    # What the fast path's stricter model refuses goes on to BentoML's API, which answers as always:
    status, body, headers = server.post("/predict", {"records": records[:1], "extra": 1}, KEY)
    assert status == 200 and by_bentomls_api(headers)  # BentoML ignores the extra key
    status, body, headers = server.post("/predict", _records(bike, temp=999), KEY)
    assert status == 400 and body["problems"][0]["field"] == "records[0].temp" and by_bentomls_api(headers)
    assert predict_count() >= before + 3


def test_the_metrics_middleware_gets_the_same_labelled_children_and_the_fix_is_still_needed() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from serving.bentoml_fixes import LabelledOnce, metrics_looked_up_per_request_upstream

    registry = CollectorRegistry()
    histogram = Histogram("request_duration_seconds", "d", ["endpoint", "http_response_code"], registry=registry)
    cached = LabelledOnce(histogram)
    for code in (200, 200, 400):
        cached.labels(endpoint="/predict", http_response_code=code).observe(0.01)
    assert cached.labels(endpoint="/predict", http_response_code=200) is histogram.labels("/predict", "200")
    text = generate_latest(registry).decode()
    assert 'request_duration_seconds_count{endpoint="/predict",http_response_code="200"} 2.0' in text
    assert 'request_duration_seconds_count{endpoint="/predict",http_response_code="400"} 1.0' in text
    # BentoML 1.4.39 looks the children up on every request; when an upgrade stops doing so, drop fix 4.
    assert metrics_looked_up_per_request_upstream()


def test_with_tracing_off_the_tracing_middleware_is_left_out_and_the_fix_is_still_needed(bike) -> None:
    from serving.bentoml_fixes import tracing_installed_unconditionally_upstream

    server = bike[0]
    status, _, headers = server.post("/predict", {"records": [{"season": "summer"}]}, KEY)  # BentoML's 400
    assert status == 400 and "x-bentoml-request-id" not in {h.lower() for h in headers}  # no span, no span id
    # BentoML 1.4.39 installs it without looking at the sample rate; when an upgrade does, drop fix 3.
    assert tracing_installed_unconditionally_upstream()


def _records(bike, **changes):
    records = [dict(r) for r in bike[2][:1]]
    for field, value in changes.items():
        if value is ...:
            records[0].pop(field)
        else:
            records[0][field] = value
    return {"records": records}


BAD_REQUESTS = [
    # (case, body or a function of the fixture, headers, status, field, words in the problem)
    ("missing field", lambda b: _records(b, temp=...), KEY, 400, "records[0].temp", "missing"),
    ("wrong type", lambda b: _records(b, temp="warm"), KEY, 400, "records[0].temp", "valid number"),
    ("out of range", lambda b: _records(b, temp=99), KEY, 400, "records[0].temp", "less than or equal to 50"),
    (
        "unknown category",
        lambda b: _records(b, season="monsoon"),
        KEY,
        400,
        "records[0].season",
        "not one of the categories: 'spring', 'summer', 'fall' or 'winter'",
    ),
    ("null where not nullable", lambda b: _records(b, hum=None), KEY, 400, "records[0].hum", "valid number"),
    ("unknown field", lambda b: _records(b, colour="red"), KEY, 400, "records[0].colour", "unknown field"),
    ("empty list", {"records": []}, KEY, 400, "records", "at least 1 item"),
    (
        "too many records",
        lambda b: {"records": b[2][:1] * (MAX_RECORDS + 1)},
        KEY,
        400,
        "records",
        f"at most {MAX_RECORDS} items",
    ),
    ("no records key", {"rows": []}, KEY, 400, "records", "missing"),
    ("not an object", [1, 2], KEY, 400, "body", "must be a JSON object"),
    ("non-JSON", b"temp=20&hum=50", KEY, 400, "body", "not valid JSON"),
    ("huge body", b"x" * 200_000, KEY, 413, None, "over 100000 bytes"),
    (
        "not JSON content",
        lambda b: _records(b),
        {**KEY, "content-type": "multipart/form-data"},
        415,
        None,
        "Content-Type: application/json",
    ),
    ("missing API key", lambda b: _records(b), {}, 401, None, "API key"),
    ("wrong API key", lambda b: _records(b), {"authorization": "Bearer wrong"}, 401, None, "API key"),
    ("wrong X-API-Key", lambda b: _records(b), {"x-api-key": "wrong"}, 401, None, "API key"),
]


@pytest.mark.parametrize("case, body, headers, status, field, words", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_a_bad_request_gets_a_4xx_that_names_the_field_and_the_problem(bike, case, body, headers, status, field, words):
    server = bike[0]
    got, answer, _ = server.post("/predict", body(bike) if callable(body) else body, headers)
    assert got == status, answer
    assert isinstance(answer["error"], str)
    if field is None:
        assert words in answer["error"]
    else:
        assert answer["problems"][0]["field"] == field and words in answer["problems"][0]["problem"]
        assert answer["error"].startswith(f"invalid request: {field}: ")


def test_rejected_requests_are_one_log_line_each_not_a_traceback(bike) -> None:
    server, *_, logs = bike
    server.post("/predict", _records(bike, season="monsoon"), KEY)
    text = (logs / "server.log").read_text()
    assert "/predict: 1 invalid field(s), answered 400" in text
    assert "Traceback" not in text and "[ERROR]" not in text


def test_schemathesis_finds_no_failure_of_any_check_in_any_documented_operation(bike, tmp_path) -> None:
    server = bike[0]
    report = tmp_path / "junit.xml"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.base}/docs.json",
            "--checks",
            "all",
            "--header",
            "Authorization: Bearer s3cret",
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )  # its cache stays out of the checkout
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    cases = report.read_text()
    assert "POST /predict" in cases and "POST /feedback" in cases, cases


def test_the_openapi_document_marks_required_bodies_and_the_fix_is_still_needed(bike) -> None:
    from serving import bentoml_fixes

    # When BentoML marks required bodies itself, this fails: drop the fix from serving/bentoml_fixes.py.
    assert not bentoml_fixes.body_marked_required_upstream()
    status, spec, _ = bike[0].get("/docs.json")
    assert status == 200
    for route in ("/predict", "/feedback"):
        assert spec["paths"][route]["post"]["requestBody"]["required"] is True, route


def test_the_request_log_holds_each_served_record_and_ground_truth_joins_it(bike) -> None:
    server, first, records, rows, logs = bike
    status, body, _ = server.post("/predict", {"records": records}, {**KEY, "x-request-id": "req-logged"})
    assert status == 200
    truth = rows["cnt"].tolist()
    labels = [{"request_id": "req-logged", "record": i, "value": int(v)} for i, v in enumerate(truth)]
    assert server.post("/feedback", {"labels": labels}, KEY)[:2] == (200, {"accepted": 5, "unmatched_request_ids": []})
    # A label for a request the log does not hold is kept, but the answer (and the log) say so.
    stray = [{"request_id": "never-served", "record": 0, "value": 3}]
    assert server.post("/feedback", {"labels": stray}, KEY)[:2] == (
        200,
        {"accepted": 1, "unmatched_request_ids": ["never-served"]},
    )
    status, answer, _ = server.post("/feedback", {"labels": [{"request_id": "req-logged", "value": "many"}]}, KEY)
    assert status == 400 and answer["problems"][0]["field"] == "labels[0].value"

    deadline = time.monotonic() + 30
    logged = labelled = pd.DataFrame()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if list((logs / "requests").rglob("*.parquet")) and list((logs / "ground-truth").rglob("*.parquet")):
            logged = pd.concat(pd.read_parquet(f) for f in (logs / "requests").rglob("*.parquet"))
            labelled = pd.concat(pd.read_parquet(f) for f in (logs / "ground-truth").rglob("*.parquet"))
            if (logged["request_id"] == "req-logged").sum() == 5 and len(labelled) >= 5:
                break
    mine = logged[logged["request_id"] == "req-logged"].sort_values("record")
    assert mine["record"].tolist() == list(range(5)) and (mine["model_version"] == first).all()
    assert mine["prediction"].tolist() == pytest.approx(body["predictions"])
    for column in ("temp", "hum", "windspeed"):
        assert mine[column].tolist() == pytest.approx([r[column] for r in records], rel=1e-6)
    assert mine["season"].astype(str).tolist() == [r["season"] for r in records]
    assert not list(logs.rglob(".*.tmp"))
    joined = mine.astype({"request_id": str}).merge(labelled.astype({"request_id": str}), on=["request_id", "record"])
    assert len(joined) == 5 and joined["cnt"].tolist() == pytest.approx(truth)
    # Only accepted requests reach the log: every logged request id answered 200.
    assert set(logged["request_id"].astype(str)) >= {"req-1", "req-logged"}


# ------------------------------------------------------------------------------------------ ACS
@pytest.fixture(scope="module")
def acs(tmp_path_factory) -> tuple[Project, str]:
    """The ACS employment classifier (one epoch), exported, registered and put in production."""
    project = new_project(tmp_path_factory.mktemp("acs"))
    project.set_params(
        data={"source": "acs"},
        train={
            "epochs": 1,
            "checks": {"skip": ["loss_at_init", "overfit_one_batch", "input_independent_baseline", "gradients"]},
        },
    )
    project.dvc("repro", "export", "evaluate")
    version = registered_id(project.loopline("register").stdout)
    project.loopline("promote", version, "--force", "--reason", "test: a one-epoch model")
    return project, version


def test_the_exported_acs_classifier_matches_the_trained_one(acs) -> None:
    project, _ = acs
    parity = json.loads(project.path("reports/export/parity.json").read_text())
    assert parity["passed"], parity
    assert parity["max_abs_diff"] <= parity["atol"]  # probabilities: the absolute bound alone holds
    golden = read_golden(project.path("artifacts/onnx/golden.json"))
    assert (golden == "__not_a_category__").any().any()  # unseen values are part of the batch
    session = ort.InferenceSession(str(project.path("artifacts/onnx/model.onnx")), providers=["CPUExecutionProvider"])
    n_num, n_cat = session.get_inputs()[0].shape[1], session.get_inputs()[1].shape[1]
    for batch in (1, 1024):
        out = session.run(
            None,
            {"numeric": np.zeros((batch, n_num), np.float32), "categorical": np.full((batch, n_cat), -1, np.int64)},
        )[0]
        assert out.shape == (batch,) and ((out >= 0) & (out <= 1)).all()


def test_the_acs_classifier_is_served_with_class_probabilities(acs) -> None:
    project, version = acs
    records, rows = feature_records(project, version, 20)
    with serving(project, LOOPLINE_REQUEST_LOG="off") as server:
        status, body, _ = server.post("/predict", {"records": records})
        assert status == 200 and body["model_version"] == version
        assert set(body["predictions"]) <= {0, 1} and len(body["probabilities"]) == 20
        for predicted, proba in zip(body["predictions"], body["probabilities"]):
            assert set(proba) == {"0", "1"} and sum(proba.values()) == pytest.approx(1, abs=1e-5)
            assert predicted == max((0, 1), key=lambda c: proba[str(c)])
        # The service answers exactly what the registered ONNX model computes for these rows.
        from loopline.runtime import onnx_session, predict_frame
        from loopline.schema import load_schema

        schema = load_schema(project.path(f"registry/versions/{version}/schema.json"))
        expected = predict_frame(onnx_session(project.path(f"registry/versions/{version}/model.onnx")), rows, schema)
        assert [p["1"] for p in body["probabilities"]] == pytest.approx(expected.tolist(), abs=1e-6)

        field = schema.categorical_features[0].name
        status, body, _ = server.post("/predict", {"records": [{**records[0], field: "not-a-category"}]})
        assert status == 400 and body["problems"] == [
            {"field": f"records[0].{field}", "problem": body["problems"][0]["problem"]}
        ]
        assert "not one of the categories" in body["problems"][0]["problem"]


# ------------------------------------------------------------------------------------ model swap
def test_a_promotion_under_load_swaps_the_model_without_a_failed_request(built) -> None:
    project = reset_registry(built)
    _, first, second, _ = built
    project.loopline("promote", first)
    records, _ = feature_records(project, first, 3)
    payload = json.dumps({"records": records}).encode()
    results: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
    stop = threading.Event()

    def load(server: Server) -> None:
        import urllib.request

        while not stop.is_set():
            request = urllib.request.Request(
                server.base + "/predict", data=payload, headers={"content-type": "application/json"}
            )
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

    log = project.root / "swap-server.log"
    with serving(project, log=log, LOOPLINE_REQUEST_LOG="off", LOOPLINE_SWAP_POLL_SECONDS="0.3") as server:
        workers = [threading.Thread(target=load, args=(server,)) for _ in range(4)]
        try:
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

    assert results and all(status == 200 for _, _, status, _ in results), [r for r in results if r[2] != 200][:3]
    assert {v for *_, v in results} == {first, second}
    # Once one answer came from the new model, every request sent after it is answered by the new model;
    # requests in flight at the swap may finish on the old one.
    swapped = min(answered for _, answered, _, v in results if v == second)
    assert versions_since(swapped) == {second}
    assert versions_since(broken_at + 1.0) == {second}
    assert f"still serving {second}: production model {'0' * 16} failed to load or check" in log.read_text()


def test_with_adaptive_batching_concurrent_requests_share_model_calls_and_get_their_own_answers(built) -> None:
    from loopline.features import RecordEncoder, decode_predictions
    from loopline.runtime import onnx_session, run_encoded
    from loopline.schema import load_schema

    project = reset_registry(built)
    first = built[1]
    project.loopline("promote", first)
    records, _ = feature_records(project, first, 40)
    version = project.path(f"registry/versions/{first}")
    schema = load_schema(version / "schema.json")
    outputs = run_encoded(onnx_session(version / "model.onnx"), RecordEncoder(schema)(records))
    expected = decode_predictions(outputs, schema)["predictions"]  # each record on its own, in process
    answers: dict[int, float] = {}

    def client(offset: int, server: Server) -> None:
        for i in range(offset, len(records), 8):  # one record a request, eight clients at once
            status, body, _ = server.post("/predict", {"records": [records[i]]})
            assert status == 200, body
            answers[i] = body["predictions"][0]

    env = {"LOOPLINE_REQUEST_LOG": "off", "LOOPLINE_BATCHING": "1", "LOOPLINE_BATCH_MAX_WAIT_MS": "20"}
    with serving(project, log=project.root / "batching-server.log", **env) as server:
        clients = [threading.Thread(target=client, args=(offset, server)) for offset in range(8)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=120)
        batching = server.get("/metadata")[1]["batching"]
    assert sorted(answers) == list(range(len(records)))
    np.testing.assert_allclose([answers[i] for i in range(len(records))], expected, rtol=1e-6)
    assert batching["requests"] == len(records) and batching["model_calls"] < batching["requests"]


# ------------------------------------------------------------------------------------ tampering
def flip_a_byte_in_an_embedding_row(model_file: Path) -> None:
    """One bit pattern changed inside a categorical feature's embedding weights, the file still valid ONNX."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(model_file))
    table = next(t for t in proto.graph.initializer if "emb" in t.name.lower() and len(t.dims) == 2)
    weights = numpy_helper.to_array(table)
    data = bytearray(model_file.read_bytes())
    at = bytes(data).find(weights.tobytes())
    assert at > 0, "embedding weights not found as raw bytes"
    data[at + weights.itemsize * weights.shape[1] + 2] ^= 0x40  # second row, first value's exponent bits
    model_file.write_bytes(bytes(data))


def test_a_flipped_byte_in_an_embedding_row_is_refused_at_start_at_swap_and_at_promotion(built) -> None:
    project = reset_registry(built)
    _, first, second, _ = built
    store = project.path(".state/bentoml/models/loopline")
    project.loopline("promote", second, "--force", "--reason", "puts a copy of second in the store")
    project.loopline("promote", first, "--force", "--reason", "first serves")

    # At start: one line naming the file and both hashes; nothing served.
    flip_a_byte_in_an_embedding_row(store / first / "model.onnx")
    log = project.root / "tampered-start.log"
    server = Server(project, {"LOOPLINE_REQUEST_LOG": "off"}, log)
    try:
        assert server.process.wait(timeout=120) != 0
    finally:
        server.stop()
    lines = [line for line in log.read_text().splitlines() if "does not match version" in line]
    assert lines and f"models/loopline/{first}/model.onnx: SHA-256 " in lines[-1] and f"version {first}" in lines[-1]
    assert "Traceback" not in log.read_text()

    # `loopline verify` repairs the store from the registry, and the service starts.
    out = project.loopline("verify")
    assert f"repaired loopline:{first}: store copy differed in model.onnx" in out.stdout, out.stdout
    assert "registry, pointer and store agree" in out.stdout
    assert "repaired" not in project.loopline("verify").stdout

    record = feature_records(project, first, 1)[0]
    with serving(
        project, log=project.root / "tampered-swap.log", LOOPLINE_REQUEST_LOG="off", LOOPLINE_SWAP_POLL_SECONDS="0.3"
    ) as server:
        # At swap: the service keeps the model it serves when the new one's store copy was altered.
        flip_a_byte_in_an_embedding_row(store / second / "model.onnx")
        registry = Registry(project.root / "registry")
        with registry.locked():  # the pointer moves without `loopline promote`, which would repair the copy
            registry.set_production(second, {"event": "promoted", "reason": "test: a tampered store copy"})
        time.sleep(2.0)
        status, body, _ = server.post("/predict", {"records": record})
        assert status == 200 and body["model_version"] == first
        swap_log = (project.root / "tampered-swap.log").read_text()
        assert f"still serving {first}: production model {second} failed to load or check" in swap_log
        assert "does not match version" in swap_log

        # At promotion: the altered store copy is saved again from the registry's bytes, and served.
        with registry.locked():
            registry.rollback("test: back to first")
        project.loopline("promote", second, "--force", "--reason", "promoted properly")
        stored = (store / second / "model.onnx").read_bytes()
        assert stored == project.path(f"registry/versions/{second}/model.onnx").read_bytes()
        deadline = time.monotonic() + 30
        while server.post("/predict", {"records": record})[1]["model_version"] != second:
            assert time.monotonic() < deadline, "the repaired model was never served"
            time.sleep(0.3)
