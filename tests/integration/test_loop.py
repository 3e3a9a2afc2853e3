"""The closed loop with real parts: bentoml serve, the request log, the monitoring and training flows in
Prefect's embedded mode and through a real `prefect server` on 127.0.0.1, alerts in the outbox."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from email import message_from_bytes
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST_TRAIN, Project, Server, new_project, serving

ALL_CHECKS = ["loss_at_init", "overfit_one_batch", "input_independent_baseline", "gradients"]


@pytest.fixture(scope="module")
def loop_project(tmp_path_factory) -> Project:
    """A bike project trained on the first half of 2011 and promoted. Slices under 100 test rows are
    reported, not judged (the 48 holiday hours of a two-month test split are too few to gate on)."""
    project = new_project(tmp_path_factory.mktemp("loop"))
    project.set_params(data={"as_of": "2011-06-30"}, train=FAST_TRAIN, evaluate={"min_slice_rows": 100})
    project.commit("train on the first half of 2011")
    project.dvc("repro")
    project.loopline("promote")
    return project


def production(project: Project) -> str:
    return json.loads(project.path("registry/production.json").read_text())["version"]


def traffic(project: Project, drift: bool, rows: int = 300) -> list[dict]:
    """Rows of the training period as requests; with `drift`, a heatwave the model never saw."""
    from loopline.schema import load_schema

    schema = load_schema(project.path("schemas/bike.yaml"))
    frame = project.read_parquet("data/prepared/train.parquet").sample(rows, random_state=3)
    if drift:
        frame = frame.assign(
            temp=(frame["temp"] + 25).clip(upper=50),
            atemp=(frame["atemp"] + 25).clip(upper=50),
            hum=(frame["hum"] * 0.3).round(),
            season="summer",
            weathersit="Clear",
        )
    return json.loads(frame[[c.name for c in schema.features]].to_json(orient="records"))


def send(server: Server, records: list[dict]) -> tuple[datetime, datetime]:
    start = datetime.now(timezone.utc)
    for i in range(0, len(records), 50):
        status, body, _ = server.post("/predict", {"records": records[i : i + 50]})
        assert status == 200, body
    time.sleep(1.0)  # the request log flushes every 0.2 s here
    return start, datetime.now(timezone.utc)


def monitor(project: Project, window: tuple[datetime, datetime]) -> dict:
    out = project.root / "monitoring-outcome.json"
    project.run(
        sys.executable,
        "-m",
        "flows.monitor",
        "--start",
        window[0].isoformat(),
        "--end",
        window[1].isoformat(),
        "--output",
        str(out),
    )
    return json.loads(out.read_text())


def emails(project: Project) -> list:
    return [message_from_bytes(p.read_bytes()) for p in sorted(project.root.glob("outbox/local/*.eml"))]


def text_of(message) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode()
    return ""


def test_no_drift_no_alert_then_one_drift_one_alert_one_retraining_and_a_worse_candidate_is_not_promoted(
    loop_project: Project,
) -> None:
    project = loop_project
    before = production(project)
    params = project.path("params.yaml").read_text()
    try:
        heatwave_with_a_broken_training_configuration(project, before)
    finally:
        project.path("params.yaml").write_text(params)  # the training configuration repaired, pass or fail
    assert list(project.root.glob("reports/monitoring/*/drift.html"))
    assert list(project.root.glob(".state/evidently/*"))


def heatwave_with_a_broken_training_configuration(project: Project, before: str) -> None:
    with serving(project, LOOPLINE_REQUEST_LOG_FLUSH_SECONDS="0.2") as server:
        calm = monitor(project, send(server, traffic(project, drift=False)))
        assert calm["verdict"] == "ok" and not calm["alerted"] and "training" not in calm
        assert emails(project) == []

        # A heatwave arrives while the training configuration has been broken: the retrained candidate is worse.
        project.set_params(train={"epochs": 1, "lr": 1e-6, "checks": {"skip": ALL_CHECKS}})
        hot = monitor(project, send(server, traffic(project, drift=True)))
        assert "drift" in hot["verdict"] and hot["alerted"] and hot["incident"] == "drift"
        assert hot["training"]["via"] == "subflow" and hot["training"]["promoted"] is False
        assert hot["training"]["gate_passed"] is False and production(project) == before
        alert, rejection = emails(project)
        assert "drift" in alert["Subject"] and before in alert["Subject"]
        assert "temp" in text_of(alert) and "Retraining has started" in text_of(alert)
        assert {p.get_filename() for p in alert.walk() if p.get_filename()} >= {"drift.html", "summary.json"}
        assert "rejected by the gate" in rejection["Subject"]
        assert f"production stays {before}" in text_of(rejection) and "FAIL" in text_of(rejection)

        # The same incident again: no second alert, no second retraining.
        again = monitor(project, send(server, traffic(project, drift=True)))
        assert "drift" in again["verdict"] and not again["alerted"] and "training" not in again
        assert len(emails(project)) == 2


def prefect(bin_dir: Path, env: dict[str, str], project: Project, *args: str) -> set[str]:
    """The words of a `prefect` CLI listing, for membership checks."""
    out = subprocess.run(
        [str(bin_dir / "prefect"), *args],
        cwd=project.root,
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
    ).stdout
    return set(out.replace("│", " ").split())


def api_post(api: str, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        api + path, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_loop_through_a_prefect_server_retrains_via_the_deployment_and_the_service_swaps(
    loop_project: Project,
) -> None:
    project = loop_project
    project.path(".state/monitoring/incidents.json").unlink(missing_ok=True)  # a new incident
    before = production(project)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    bin_dir = Path(sys.executable).parent
    env = {**project.env(), "PREFECT_API_URL": api, "PREFECT_HOME": str(project.root / ".state" / "prefect-server")}
    logs = project.root / "prefect-logs"
    logs.mkdir(exist_ok=True)
    prefect_server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=project.root,
        env=env,
        stdout=(logs / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2):
                    break
            except OSError:
                assert prefect_server.poll() is None and time.monotonic() < deadline, (logs / "server.log").read_text()
                time.sleep(1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "--no-schedules"],
            cwd=project.root,
            env=env,
            stdout=(logs / "serve.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while not {"training/training", "monitoring/monitoring"} <= prefect(bin_dir, env, project, "deployment", "ls"):
            assert worker.poll() is None and time.monotonic() < deadline, (logs / "serve.log").read_text()
            time.sleep(2)
        mails_before = len(emails(project))

        with serving(project, LOOPLINE_REQUEST_LOG_FLUSH_SECONDS="0.2", LOOPLINE_SWAP_POLL_SECONDS="0.5") as server:
            start, end = send(server, traffic(project, drift=True))
            result = subprocess.run(
                [
                    str(bin_dir / "prefect"),
                    "deployment",
                    "run",
                    "monitoring/monitoring",
                    "--param",
                    f"start={start.isoformat()}",
                    "--param",
                    f"end={end.isoformat()}",
                    "--param",
                    "retrain_as_of=2012-06-30",
                    "--watch",
                    "--watch-timeout",
                    "600",
                ],
                cwd=project.root,
                env={**env, "COLUMNS": "200"},
                capture_output=True,
                text=True,
                timeout=700,
            )
            assert result.returncode == 0, result.stdout + result.stderr + (logs / "serve.log").read_text()[-3000:]
            after = production(project)
            assert after != before, (logs / "serve.log").read_text()[-4000:]
            deadline = time.monotonic() + 30
            while server.get("/metadata")[1]["model_version"] != after and time.monotonic() < deadline:
                time.sleep(0.5)
            assert (
                server.post("/predict", {"records": traffic(project, drift=False, rows=2)})[1]["model_version"] == after
            )
        # Training ran as a run of the training deployment (not as a subflow of the monitoring run).
        [deployment] = api_post(api, "/deployments/filter", {"deployments": {"name": {"any_": ["training"]}}})
        training_runs = api_post(api, "/flow_runs/filter", {"flows": {"name": {"any_": ["training"]}}})
        assert [(r["deployment_id"], r["state_type"]) for r in training_runs] == [(deployment["id"], "COMPLETED")]
        [monitoring_run] = api_post(api, "/flow_runs/filter", {"flows": {"name": {"any_": ["monitoring"]}}})
        assert monitoring_run["state_type"] == "COMPLETED"
        newest = project.read_parquet("data/raw/snapshot.parquet")["timestamp"].max()
        assert pd.Timestamp(newest) >= pd.Timestamp("2012-06-30")  # retrained on the newer data
        [alert] = emails(project)[mails_before:]
        assert "drift" in alert["Subject"] and before in alert["Subject"]
    finally:
        for process in (worker, prefect_server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def test_a_failed_training_run_is_emailed_and_leaves_production_and_the_last_outputs(loop_project: Project) -> None:
    project = loop_project
    before, model = production(project), project.path("artifacts/model/model.pt").read_bytes()
    params = project.path("params.yaml").read_text()
    mails_before = len(emails(project))
    project.set_params(train={"batch_size": 0})  # refused by the params validation when the stage starts
    try:
        failed = project.run(sys.executable, "-m", "flows.training", check=False)
    finally:
        project.path("params.yaml").write_text(params)
    assert failed.returncode != 0 and "train" in failed.output
    [mail] = emails(project)[mails_before:]
    assert "training run" in mail["Subject"] and "failed" in mail["Subject"]
    assert "batch_size" in text_of(mail) and "production model is unchanged" in text_of(mail)
    assert production(project) == before and project.path("artifacts/model/model.pt").read_bytes() == model
