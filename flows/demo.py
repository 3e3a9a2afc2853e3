"""The closed loop on the bike data, end to end: `make demo`.

1. A scratch Loopline project (.state/demo/project, its own git repository; the workspace's own params
   and data are untouched) trains on the bundled data up to `--train-until` through the `training` flow,
   and the model goes to production.
2. `bentoml serve` starts on 127.0.0.1 over it.
3. The following weeks of real hourly rows are replayed as HTTP traffic, a day per request, each record
   with its event time, and each day's true counts are posted to /feedback `--label-delay-days` later.
4. After each replayed week the `monitoring` flow checks that week's traffic: the production model's
   error against its normal error (harm alerts by email, written to the scratch project's outbox/local
   as .eml unless SMTP is configured), the challenger in shadow against production on the same labelled
   records (promoted when better with confidence; the running service swaps to it without a restart),
   the replaced model watched for a rollback, and a level correction of production put in shadow when
   the labelled records sit a steady factor above or below its predictions. Once a week of newer labels
   has arrived it starts the training flow, which harvests the labelled traffic into a batch, retrains
   on the initial data plus everything harvested (never on the bundled file's later rows), commits the
   run on the `loopline/retrain` branch and gates the candidate; one that passes is scored in shadow.
5. At the end: a timeline table (reports/demo/timeline.md) and a plot (reports/demo/weekly_error.png) of
   the served model's weekly error against the first model left frozen and against a weekly-gated
   schedule (each week's candidate promoted at once when it passes the gate, judged against that
   schedule's own production model), with alerts, promotions and the harvested rows each retraining used.

    python -m flows.demo [--weeks 12] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loopline.config import update_params_file
from loopline.env import run_dvc, tool
from loopline.paths import PROJECT_FILES
from loopline.registry import Registry

WORKSPACE = Path(__file__).resolve().parents[1]


@dataclass
class Week:
    index: int
    start: pd.Timestamp
    rows: int = 0
    served_versions: set[str] = field(default_factory=set)
    mae_loop: float = float("nan")
    mae_frozen: float = float("nan")
    mae_gated: float = float("nan")
    candidate: str | None = None
    """The candidate trained after this week's check (it passed the gate or not)."""
    verdict: str = ""
    events: list[str] = field(default_factory=list)
    harvested_rows: int | None = None
    """Rows harvested from the service in the data of the week's retraining (None: no retraining)."""


def scratch_project(dest: Path, train_until: str, remind_hours: float) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = WORKSPACE / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    update_params_file(dest / "params.yaml", {"monitor.alerts.remind_hours": remind_hours})
    identity = ["-c", "user.name=Loopline demo", "-c", "user.email=demo@localhost"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    run_dvc(dest, "init", "-q")
    seed_initial_data(dest, train_until)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(
        ["git", *identity, "commit", "-q", "-m", f"The demo project, trained until {train_until}"], cwd=dest, check=True
    )
    return dest


INITIAL_DATA = "data/external/initial.parquet"


def seed_initial_data(project: Path, until: str) -> None:
    """The bundled bike rows up to `until` (inclusive) as the project's source file, tracked by DVC: what
    the first model knows. Later rows reach training only as harvested traffic."""
    from dataprep.sources import load_bike
    from dataprep.validate import PROVENANCE

    bike = load_bike()
    known = bike[bike["timestamp"] < pd.Timestamp(until) + pd.Timedelta(days=1)].drop(columns=PROVENANCE)
    known.to_parquet(project / INITIAL_DATA, index=False)
    run_dvc(project, "add", "-q", INITIAL_DATA)
    update_params_file(
        project / "params.yaml",
        {"data.source": "file", "data.path": INITIAL_DATA, "data.schema": "schemas/bike.yaml", "data.as_of": None},
    )


class Client:
    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, headers={"content-type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def wait_for(self, version: str | None = None, shadows: list[str] | None = None, timeout: float = 120) -> str:
        """Until the service serves `version` (any model when None) and, when given, scores exactly
        `shadows` beside it; the model it serves."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, info = self.call("/metadata")
                if (
                    status == 200
                    and (version is None or info["model_version"] == version)
                    and (shadows is None or info["shadow_versions"] == sorted(shadows))
                ):
                    return info["model_version"]
            except OSError:
                pass
            time.sleep(0.25)
        wanted = f"{version or 'a model'}" + (f" with {sorted(shadows)} in shadow" if shadows is not None else "")
        raise TimeoutError(f"the service did not serve {wanted} within {timeout:.0f} s")


def start_service(project: Path, log: Path) -> tuple[subprocess.Popen, Client]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "LOOPLINE_ROOT": str(project),
        "LOOPLINE_REQUEST_LOG_FLUSH_SECONDS": "0.3",
        "LOOPLINE_SWAP_POLL_SECONDS": "0.3",
    }
    for variable in ("LOOPLINE_REQUEST_LOG", "LOOPLINE_GROUND_TRUTH", "LOOPLINE_MODEL_TAG"):
        env.pop(variable, None)
    process = subprocess.Popen(
        [
            tool("bentoml"),
            "serve",
            "serving.service:Predictor",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=project,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = Client(f"http://127.0.0.1:{port}")
    try:
        client.wait_for()
    except TimeoutError:
        process.terminate()
        raise RuntimeError(f"the service did not start; see {log}") from None
    return process, client


def enter_scratch_project(args: argparse.Namespace) -> Path:
    """Make the scratch project and point this process (flows, DVC, Prefect, BentoML state) at it."""
    project = scratch_project(WORKSPACE / ".state" / "demo" / "project", args.train_until, args.remind_days * 24)
    os.environ["LOOPLINE_ROOT"] = str(project)
    for variable in (
        "LOOPLINE_REQUEST_LOG",
        "LOOPLINE_GROUND_TRUTH",
        "LOOPLINE_OUTBOX",
        "PREFECT_HOME",
        "BENTOML_HOME",
        "DVC_SITE_CACHE_DIR",
    ):
        os.environ.pop(variable, None)
    os.chdir(project)
    from loopline.env import use_project_state
    from loopline.paths import ProjectPaths

    use_project_state(ProjectPaths(project))
    return project


@dataclass
class LabelQueue:
    """Each served day's true counts, posted to /feedback `delay_days` later (in replayed time)."""

    client: Client
    delay_days: int
    due: list[tuple[pd.Timestamp, str, list[int]]] = field(default_factory=list)

    def add(self, day: Any, request_id: str, truth: list[int]) -> None:
        self.due.append((pd.Timestamp(day) + pd.Timedelta(days=self.delay_days), request_id, truth))

    def post_arrived(self, now: pd.Timestamp) -> None:
        while self.due and self.due[0][0] <= now:
            _, request_id, truth = self.due.pop(0)
            labels = [{"request_id": request_id, "record": i, "value": v} for i, v in enumerate(truth)]
            self.client.call("/feedback", {"labels": labels})


def serve_week(client: Client, week: Week, rows: pd.DataFrame, features: list[str], labels: LabelQueue) -> pd.DataFrame:
    """The week's rows as requests, a day per request, each record with its event time (which the
    harvest gives the training row); the labels that arrive by each day's end are posted."""
    served = []
    for day, day_rows in rows.groupby(rows["timestamp"].dt.date):
        request_id = f"day-{day}"
        records = json.loads(day_rows[[*features, "timestamp"]].to_json(orient="records", date_format="iso"))
        status, body = client.call("/predict", {"records": records}, {"x-request-id": request_id})
        if status != 200:
            raise RuntimeError(f"replay of {day}: HTTP {status}: {body}")
        served.append(day_rows.assign(prediction=body["predictions"], served_by=body["model_version"], week=week.index))
        week.served_versions.add(body["model_version"])
        labels.add(day, request_id, day_rows["cnt"].astype(int).tolist())
        labels.post_arrived(pd.Timestamp(day) + pd.Timedelta(days=1))
    return pd.concat(served)


def check_week(client: Client, week: Week, window: tuple[datetime, datetime], onset: float) -> dict[str, Any] | None:
    """The monitoring flow on the week's traffic (its end in replayed time); what it did goes into
    `week`. Returns the timing of a promotion or rollback (the week's first request to the new
    production model answering)."""
    from flows.monitor import monitoring

    sim_end = week.start + pd.Timedelta(days=7)
    outcome = monitoring(
        start=window[0],
        end=window[1],
        now=sim_end.tz_localize("UTC").to_pydatetime(),
        retrain_as_of=None,  # retraining learns from the harvested traffic, not the bundled file's future
    )
    week.verdict = outcome["verdict"]
    for kind, subject in zip(outcome["alert_kinds"], outcome["alerts"]):
        if kind in ("harm", "input", "escalation"):  # promotions and rollbacks are listed below
            week.events.append(f"alert: {subject}")
    changed = None
    for action in outcome["actions"]:
        if action["action"] == "promoted":
            changed = action["version"]
            week.events.append(
                f"promoted {changed[:8]} ({action['evidence']['comparison']['change']:+.0%} on live labels)"
            )
        elif action["action"] == "rolled back":
            changed = action["to"]
            week.events.append(f"rolled back to {changed[:8]}")
        elif action["action"] == "retired":
            week.events.append(f"retired {action['version'][:8]}")
        elif action["action"] == "recalibrated":
            week.events.append(
                f"level {action['level']['change']:+.0%}: {action['version'][:8]} "
                f"({action['parent'][:8]} corrected) in shadow"
            )
    trained = outcome.get("training")
    if trained:
        week.candidate = trained["version"]
        harvested = trained.get("harvested") or []
        week.harvested_rows = sum(sum(b["rows"].values()) for b in harvested)
        week.events.append(
            f"trained {trained['version'][:8]} ({outcome['retrain']}): "
            + (
                "in shadow"
                if trained.get("shadow")
                else "promoted"
                if trained.get("promoted")
                else "rejected by the gate"
            )
        )
    if changed is None:
        return None
    switched_at = time.monotonic()
    client.wait_for(changed)
    return {
        "week": week.index,
        "onset_to_new_model_s": round(time.monotonic() - onset, 1),
        "promotion_to_serving_s": round(time.monotonic() - switched_at, 2),
    }


def replay(args: argparse.Namespace) -> dict[str, Any]:
    from dataprep.sources import load_bike
    from loopline.schema import load_schema

    project = enter_scratch_project(args)
    from flows.training import training

    clock = time.monotonic()
    first = training()
    if not first["promoted"]:
        raise RuntimeError(f"the first model was not promoted: {first['reason']}")
    initial = first["version"]
    print(f"[{time.monotonic() - clock:5.0f} s] trained until {args.train_until}: {initial} in production")
    server, client = start_service(project, project / "server.log")
    features = [c.name for c in load_schema(project / "schemas" / "bike.yaml").features]
    data = load_bike().sort_values("timestamp")
    begin = pd.Timestamp(args.train_until) + pd.Timedelta(days=1)
    end = pd.Timestamp("2013-01-01") if args.full else begin + pd.Timedelta(weeks=args.weeks)
    data = data[(data["timestamp"] >= begin) & (data["timestamp"] < end)]
    served: list[pd.DataFrame] = []
    weeks: list[Week] = []
    timings: list[dict[str, Any]] = []
    labels = LabelQueue(client, args.label_delay_days)
    try:
        for index, (week_start, week_rows) in enumerate(
            data.groupby(pd.Grouper(key="timestamp", freq="7D", origin=begin))
        ):
            week = Week(index, week_start, rows=len(week_rows))
            weeks.append(week)
            real_start, onset = datetime.now(timezone.utc), time.monotonic()
            served.append(serve_week(client, week, week_rows, features, labels))
            time.sleep(1.0)  # the request log flushes every 0.3 s
            before = Registry.for_project(project).production()
            timing = check_week(client, week, (real_start, datetime.now(timezone.utc)), onset)
            if timing:
                timings.append(timing)
            # The next week is served as the registry now says: its shadow models scored from the first
            # request (the service picks them up within a poll; the evidence for a promotion is theirs).
            registry = Registry.for_project(project)
            client.wait_for(registry.production(), list(registry.shadows()))
            print(
                f"[{time.monotonic() - clock:5.0f} s] week {index} from {week_start.date()}: {week.verdict}"
                f"{' - ' + ', '.join(week.events) if week.events else ''} (production was {before[:8]})"
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    return {
        "project": project,
        "initial": initial,
        "served": pd.concat(served),
        "weeks": weeks,
        "timings": timings,
        "seconds": time.monotonic() - clock,
    }


def predictions(project: Path, version: str, rows: pd.DataFrame) -> np.ndarray:
    """A registered model's predictions on the replayed rows, as if it had been serving them."""
    from loopline.runtime import onnx_session, predict_frame
    from release.promote import version_schema

    record = Registry.for_project(project).get(version)
    return predict_frame(onnx_session(record.model), rows, version_schema(record))


def weekly_gated(project: Path, initial: str, weeks: list[Week]) -> list[str]:
    """The version a weekly-gated schedule serves each week: each week's candidate promoted at once when
    it passes the gate against that schedule's own production model (the same candidates the loop
    trained, judged on their own test rows)."""
    from loopline.config import load_params
    from release.promote import rejudge

    registry = Registry.for_project(project)
    params = load_params(project / "params.yaml")
    serving, schedule = initial, []
    for week in weeks:
        schedule.append(serving)
        if week.candidate and week.candidate != serving:
            candidate = registry.get(week.candidate)
            if rejudge(candidate, registry, params.gate, params.evaluate.min_slice_rows, champion=serving).passed:
                serving = candidate.id
    return schedule


def report(run: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    served = run["served"]
    served = served.assign(frozen=predictions(run["project"], run["initial"], served), gated=np.nan)
    schedule = weekly_gated(run["project"], run["initial"], run["weeks"])
    for week, version in zip(run["weeks"], schedule):
        rows = served["week"] == week.index
        served.loc[rows, "gated"] = predictions(run["project"], version, served[rows])
    for week in run["weeks"]:
        rows = served[served["week"] == week.index]
        week.mae_loop, week.mae_frozen, week.mae_gated = (
            float(np.mean(np.abs(rows[c] - rows["cnt"]))) for c in ("prediction", "frozen", "gated")
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "| week | from | rows | served by | MAE with the loop | MAE weekly-gated | MAE frozen | check | events "
        "| harvested rows in the candidate's data |",
        "|---:|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for w in run["weeks"]:
        harvested = "" if w.harvested_rows is None else str(w.harvested_rows)
        lines.append(
            f"| {w.index} | {w.start.date()} | {w.rows} | {', '.join(sorted(v[:8] for v in w.served_versions))} "
            f"| {w.mae_loop:.1f} | {w.mae_gated:.1f} | {w.mae_frozen:.1f} | {w.verdict} | {'; '.join(w.events)} "
            f"| {harvested} |"
        )
    loop, gated, frozen = (float(np.mean(np.abs(served[c] - served["cnt"]))) for c in ("prediction", "gated", "frozen"))
    alerting = sum(any(e.startswith("alert") for e in w.events) for w in run["weeks"])
    lines += [
        "",
        f"Over all {len(served)} replayed hours: MAE {loop:.1f} with the loop, {gated:.1f} weekly-gated, "
        f"{frozen:.1f} with the first model frozen ({(loop - frozen) / frozen:+.0%}); "
        f"{alerting} of {len(run['weeks'])} weeks alerted (harm, input problems, escalation).",
        "",
    ]
    for t in run["timings"]:
        lines.append(
            f"- week {t['week']}: from the week's first request to the new production model answering "
            f"{t['onset_to_new_model_s']} s (swap after the decision {t['promotion_to_serving_s']} s)"
        )
    lines.append(f"\nDemo wall time: {run['seconds']:.0f} s.")
    table = out_dir / "timeline.md"
    table.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    starts = [w.start for w in run["weeks"]]
    ax.plot(starts, [w.mae_frozen for w in run["weeks"]], marker="o", label="first model, frozen", color="tab:gray")
    ax.plot(
        starts,
        [w.mae_gated for w in run["weeks"]],
        marker=".",
        linestyle=":",
        label="weekly retraining, promoted through the gate",
        color="tab:purple",
    )
    ax.plot(
        starts, [w.mae_loop for w in run["weeks"]], marker="o", label="with monitoring and retraining", color="tab:blue"
    )
    for w in run["weeks"]:
        end = w.start + pd.Timedelta(days=7)
        if any(e.startswith("alert") for e in w.events):
            ax.axvline(end, color="tab:orange", linestyle="--", linewidth=1)
        if any(e.startswith(("promoted", "rolled back")) for e in w.events):
            ax.axvline(end, color="tab:green", linewidth=1.5)
        if any("rejected" in e or e.startswith("retired") for e in w.events):
            ax.plot([end], [w.mae_loop], marker="x", markersize=10, color="tab:red", linestyle="none")
    ax.plot([], [], color="tab:orange", linestyle="--", label="alert (harm, input problem, escalation)")
    ax.plot([], [], marker="x", color="tab:red", linestyle="none", label="candidate rejected or retired")
    ax.plot([], [], color="tab:green", label="promoted on live evidence (or rolled back)")
    ax.set_ylabel("weekly MAE (rentals per hour)")
    ax.set_title("Bike rentals: served model's weekly error, the loop against weekly-gated and frozen")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    plot = out_dir / "weekly_error.png"
    fig.savefig(plot, dpi=110)
    return table, plot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-until", default="2011-06-30", help="the first model knows rows up to this date")
    parser.add_argument("--weeks", type=int, default=12, help="weeks replayed after it")
    parser.add_argument("--full", action="store_true", help="replay everything to the end of 2012")
    parser.add_argument("--label-delay-days", type=int, default=2)
    parser.add_argument(
        "--remind-days", type=float, default=28, help="an unchanged open incident emails again after this long"
    )
    args = parser.parse_args(argv)
    run = replay(args)
    table, plot = report(run, WORKSPACE / "reports" / "demo")
    print("\n" + table.read_text())
    print(f"timeline: {table}\nplot: {plot}\nalerts: {run['project'] / 'outbox'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
