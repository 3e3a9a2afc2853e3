"""Serve the deployments of prefect.yaml from this one process (Prefect's `serve`: no work pool, no worker).

    prefect server start --host 127.0.0.1 --port 4200          # one terminal
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve \
        [--monitoring-cron "0 * * * *"] [--training-cron "0 3 * * 1"] [--tuning-cron "0 2 1 * *"]

The one-process option. The deployments, their schedules (monitoring hourly, training weekly, tuning and
scoring on demand) and concurrency limits are prefect.yaml's, as `prefect deploy --all` registers them for
a work pool; a --*-cron option replaces that deployment's schedules, and `--no-schedules` registers them
all without one (run them with `prefect deployment run monitoring/monitoring`).
"""

from __future__ import annotations

import argparse
import sys

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig

from flows.deployments import DeploymentSpec, load_deployments
from loopline.env import use_project_state
from loopline.paths import ProjectPaths


def runner_deployment(spec: DeploymentSpec, crons: tuple[str, ...]) -> object:
    limit = (
        ConcurrencyLimitConfig(limit=spec.concurrency_limit, collision_strategy=spec.collision_strategy)
        if spec.concurrency_limit
        else None
    )
    return spec.load_flow().to_deployment(
        name=spec.name,
        cron=list(crons) or None,
        concurrency_limit=limit,
        parameters=spec.parameters or None,
        description=spec.description or None,
    )


def main(argv: list[str] | None = None) -> int:
    paths = ProjectPaths.here()
    specs = load_deployments(paths.root)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in specs:
        parser.add_argument(f"--{name}-cron", help=f"when {name} runs (cron, UTC; replaces prefect.yaml's)")
    parser.add_argument("--no-schedules", action="store_true")
    args = parser.parse_args(argv)
    use_project_state(paths)
    deployments = []
    for name, spec in specs.items():
        override = getattr(args, f"{name}_cron")
        crons = () if args.no_schedules else (override,) if override else spec.crons
        deployments.append(runner_deployment(spec, crons))
    serve(*deployments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
