"""The `monitoring` flow: check the served traffic, act on the models in shadow, alert, and start the
`training` flow when a new candidate is due.

    python -m flows.monitor [--hours 168 | --start ISO --end ISO] [--retrain-as-of DATE] [--output FILE]

The check itself is monitoring.check (it runs without Prefect): harm (new or worse) or a refresh of
`monitor.refresh_days` newer labelled data, with no challenger in shadow, starts one training run; an
input problem never does. With a Prefect server (PREFECT_API_URL set) and the `training/training`
deployment registered (prefect.yaml: `prefect deploy --all` or flows.serve), training runs through that
deployment; otherwise, in the embedded mode, as a subflow of this run. The candidate goes to shadow; a later check promotes it on live evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import flow, task

from loopline.env import use_project_state
from loopline.paths import ProjectPaths

TRAINING_DEPLOYMENT = "training/training"


@task(task_run_name="check the served traffic")
def check_task(start: datetime, end: datetime, now: datetime) -> dict[str, Any]:
    from monitoring.check import run_check

    return run_check(ProjectPaths.here(), start, end, now, can_retrain=True).to_dict()


def start_training(as_of: str | None) -> dict[str, Any]:
    """Through the deployment when a server knows it, else as a subflow."""
    parameters = {"as_of": as_of, "keep_as_of": as_of is None}
    if os.environ.get("PREFECT_API_URL"):
        from prefect.deployments import run_deployment
        from prefect.exceptions import ObjectNotFound

        try:
            # Waits for the training run (it gates and promotes); an hour without a process serving the
            # deployment leaves the run scheduled and this flow reports its state.
            run = run_deployment(TRAINING_DEPLOYMENT, parameters=parameters, timeout=3600)
        except ObjectNotFound:
            print(f"no {TRAINING_DEPLOYMENT} deployment on {os.environ['PREFECT_API_URL']}: training as a subflow")
        else:
            result = None
            if run.state and run.state.is_completed():
                try:  # the training flow persists its result; storage not shared with this worker: no detail
                    result = run.state.result()
                except Exception as exc:
                    print(f"training run {run.id} completed; its result is not readable here: {exc}")
            return {
                "via": "deployment",
                "flow_run": str(run.id),
                "state": run.state.name if run.state else None,
                **(result if isinstance(result, dict) else {}),
            }
    from flows.training import training

    return {"via": "subflow", **training(**parameters)}


@flow(name="monitoring", log_prints=True)
def monitoring(
    hours: float | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    now: datetime | None = None,
    retrain_as_of: str | None = None,
) -> dict[str, Any]:
    """Check [start, end) (default: the last `monitor.window_hours`), alert, retrain on a new incident.
    `now` and `retrain_as_of` let a replay run in its own time; by default the wall clock and all data."""
    from loopline.config import load_params

    paths = ProjectPaths.here()
    use_project_state(paths)
    end = end or datetime.now(timezone.utc)
    start = start or end - timedelta(hours=hours or load_params(paths.params).monitor.window_hours)
    outcome = check_task(start, end, now or datetime.now(timezone.utc))
    print(outcome["summary"])
    if outcome["retrain"]:
        outcome["training"] = start_training(retrain_as_of)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, help="window length (default: monitor.window_hours)")
    parser.add_argument("--start", type=datetime.fromisoformat, help="window start (ISO, with a UTC offset)")
    parser.add_argument("--end", type=datetime.fromisoformat, help="window end (default: now)")
    parser.add_argument("--retrain-as-of", help="retrain on the rows known at this date (default: all)")
    parser.add_argument("--output", type=Path, help="also write the outcome as JSON here")
    args = parser.parse_args(argv)
    outcome = monitoring(hours=args.hours, start=args.start, end=args.end, retrain_as_of=args.retrain_as_of)
    text = json.dumps(outcome, indent=2, default=str)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
