"""One monitoring run over the production model's recent traffic, without any orchestrator.

    python -m monitoring.check [--hours 168]        # or the `monitoring` Prefect flow, which calls this

It reads the window of the request log served by the production version, judges it (monitoring.drift),
saves summary.json and Evidently's HTML under reports/monitoring/<window end>/, adds the run to the
Evidently workspace, and on drift or degradation alerts by email once per incident (monitoring.alerts)
and says whether to retrain. Delivering the outbox is part of every run, so an alert that could not be
sent earlier goes out with the next one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from loopline.config import AlertParams, load_params
from loopline.paths import ProjectPaths
from loopline.registry import REFERENCE_FILE, Registry
from loopline.runtime import onnx_session, predict_frame
from monitoring.alerts import Delivery, Incidents, Outbox, SmtpSettings, compose
from monitoring.drift import WindowCheck, add_to_workspace, check_window, reference_frame, save_check
from monitoring.window import served_window

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: WindowCheck
    files: dict[str, Path]
    incident: str | None = None
    alerted: bool = False
    retrain: bool = False
    delivery: Delivery = field(default_factory=Delivery)

    def to_dict(self) -> dict:
        return {
            "verdict": self.result.verdict,
            "summary": self.result.summary(),
            "incident": self.incident,
            "alerted": self.alerted,
            "retrain": self.retrain,
            "files": {k: str(v) for k, v in self.files.items()},
            "sent": [str(p) for p in self.delivery.sent],
            "written": [str(p) for p in self.delivery.written],
            "pending": [str(p) for p in self.delivery.pending],
        }


def run_check(
    paths: ProjectPaths, start: datetime, end: datetime, now: datetime | None = None, *, can_retrain: bool = False
) -> Outcome:
    """Check the production model's traffic served in [start, end). `now` is the time incidents and
    cooldowns are reckoned in (the wall clock unless a replay says otherwise). `can_retrain`: the caller
    (the monitoring flow) starts training when the outcome says `retrain`."""
    from release.promote import version_schema

    params = load_params(paths.params)
    now = now or datetime.now(timezone.utc)
    registry = Registry.for_project(paths.root)
    version = registry.production()
    if version is None:
        raise RuntimeError(f"no production model in {registry.root}: nothing is served, nothing to monitor")
    record = registry.get(version)
    schema = version_schema(record)
    window = served_window(paths.request_log_dir, paths.ground_truth_dir, schema, start, end)
    window = window[window["model_version"].astype(str) == version] if len(window) else window
    training = pd.read_parquet(record.file(REFERENCE_FILE))
    session = onnx_session(record.model)
    reference = reference_frame(training, schema, predict_frame(session, training, schema), seed=params.seed)
    result, snapshots = check_window(
        window,
        reference,
        schema,
        params.monitor,
        model_version=version,
        reference_metrics=record.metadata["metrics"]["model"],
        window_start=start,
        window_end=end,
    )
    out_dir = paths.monitoring_dir / f"{end:%Y%m%dT%H%M%S}"
    files = save_check(result, snapshots, out_dir)
    add_to_workspace(snapshots, paths.evidently_workspace)
    outcome = Outcome(result, files)
    log.info("monitoring %s: %s", version, result.summary())

    alerts = params.monitor.alerts
    if result.alarming:
        kinds = [
            k
            for k, present in (("drift", "drift" in result.verdict), ("degradation", "degraded" in result.verdict))
            if present
        ]
        incidents = Incidents(paths.incidents)
        cooldown = timedelta(hours=alerts.cooldown_hours)
        claimed = [k for k in kinds if incidents.claim(k, now, cooldown)]
        outcome.incident = "+".join(claimed or kinds)
        if claimed:
            outcome.alerted, outcome.retrain = True, params.monitor.retrain and can_retrain
            if outcome.retrain:
                next_step = (
                    "Retraining has started on the data known now; the new candidate replaces the model "
                    "only if it passes the gate, and you will hear about the verdict."
                )
            elif not params.monitor.retrain:
                next_step = (
                    "Retraining is off (monitor.retrain: false in params.yaml): retrain and promote by "
                    "hand (`python -m flows.training`, or `make pipeline`)."
                )
            else:
                next_step = (
                    "This check ran on its own (python -m monitoring.check), so no retraining was started: "
                    "run `python -m flows.training`, or let the monitoring flow do both."
                )
            queue_alert(
                paths,
                alerts,
                f"{result.verdict} in the traffic of model {version}",
                drift_body(result, next_step, params.monitor.max_degradation),
                [p for k, p in files.items() if k != "summary"] + [files["summary"]],
            )
        else:
            log.info(
                "%s already alerted within %s h: no new alert, no new retraining",
                outcome.incident,
                alerts.cooldown_hours,
            )
    outcome.delivery = deliver(paths, alerts)
    return outcome


def drift_body(result: WindowCheck, next_step: str, max_degradation: float) -> str:
    lines = [result.summary(), ""]
    if result.drifted:
        lines.append("Drifted columns (score, method, threshold):")
        for c in sorted(result.drifted, key=lambda c: -c.score):
            lines.append(f"  {c.column}: {c.score:.3g} ({c.method}, threshold {c.threshold:g})")
        lines.append("")
    if result.performance is not None:
        p = result.performance
        lines.append(
            f"Performance: {p.metric} {p.window:.4g} on {p.labelled_rows} labelled records, "
            f"{p.reference:.4g} at registration ({p.degradation:+.0%} error; limit +{max_degradation:.0%})."
        )
        lines.append("")
    lines += [
        f"Window: {result.window_start} to {result.window_end}.",
        "",
        f"What happens next: {next_step}",
        "",
        "The Evidently report and the JSON summary are attached.",
    ]
    return "\n".join(lines)


def alert_params(paths: ProjectPaths) -> AlertParams:
    """`monitor.alerts` from params.yaml, even when another section is invalid (a failure to report may
    be exactly that); the defaults if the section itself cannot be read."""
    import yaml

    from loopline.config import MonitorParams

    try:
        raw = yaml.safe_load(paths.params.read_text()) or {}
        return MonitorParams.model_validate(raw.get("monitor") or {}).alerts
    except Exception:
        log.warning("params.yaml: monitor.alerts unreadable; alerting with the defaults", exc_info=True)
        return AlertParams()


def queue_alert(
    paths: ProjectPaths, alerts: AlertParams, subject: str, body: str, attachments: list[Path] = ()
) -> Path:
    return Outbox.for_project(paths.root).put(compose(subject, body, alerts, list(attachments)))


def deliver(paths: ProjectPaths, alerts: AlertParams) -> Delivery:
    """Send what the outbox holds (or write it as .eml without SMTP) and say where it went."""
    delivery = Outbox.for_project(paths.root).deliver(SmtpSettings.from_env(), alerts.retry_seconds)
    for path in delivery.written:
        print(f"alert written (no SMTP configured): {path}")
    for path in delivery.pending:
        print(f"alert not delivered yet, kept in the outbox: {path}")
    return delivery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, help="window length (default: monitor.window_hours)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = ProjectPaths.here()
    end = datetime.now(timezone.utc)
    hours = args.hours or load_params(paths.params).monitor.window_hours
    outcome = run_check(paths, end - timedelta(hours=hours), end)
    print(json.dumps(outcome.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
