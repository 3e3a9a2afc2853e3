"""Register the flows as scheduled deployments on a Prefect server and run them (this process is the worker).

    prefect server start --host 127.0.0.1 --port 4200          # one terminal
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve \
        [--monitoring-cron "0 * * * *"] [--training-cron "0 3 * * 1"] [--tuning-cron "0 2 1 * *"]

Monitoring hourly and training weekly by default; the hyperparameter search (`tuning`, which ends in a
training run on its winner) has no schedule unless --tuning-cron gives one. `--no-schedules` registers
them all without schedules (run them with `prefect deployment run monitoring/monitoring`). The batch
`scoring` deployment never has a schedule: run it with its input and output as parameters.
"""

from __future__ import annotations

import argparse
import sys

from prefect import serve

from flows.monitor import monitoring
from flows.scoring import scoring
from flows.training import training
from flows.tuning import tuning
from loopline.env import use_project_state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--monitoring-cron", default="0 * * * *", help="when monitoring runs (cron, UTC)")
    parser.add_argument("--training-cron", default="0 3 * * 1", help="when training runs (cron, UTC)")
    parser.add_argument("--tuning-cron", default=None, help="when the hyperparameter search runs (cron, UTC)")
    parser.add_argument("--no-schedules", action="store_true")
    args = parser.parse_args(argv)
    use_project_state()
    cron = (lambda c: None) if args.no_schedules else (lambda c: c)
    serve(
        monitoring.to_deployment(name="monitoring", cron=cron(args.monitoring_cron)),
        training.to_deployment(name="training", cron=cron(args.training_cron)),
        tuning.to_deployment(name="tuning", cron=cron(args.tuning_cron) if args.tuning_cron else None),
        scoring.to_deployment(name="scoring"),  # on demand: --param input=... --param output=...
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
