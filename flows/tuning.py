"""The `tuning` flow: data stages, the hyperparameter search, then the training flow on its winner.

    python -m flows.tuning [--trials 20] [--timeout-minutes 30] [--workers 2] [--no-train]

`ingest` and `prepare` run first (the search reads data/prepared), then `tuning.search` with params.yaml's
`tune:` settings and this run's budget; it writes tuned.yaml. Unless told not to, the `training` flow
follows as a subflow in this directory (not in a retraining worktree: tuned.yaml is not committed yet):
`train` applies tuned.yaml, and the candidate faces the gate like any other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.training import stage_task, training
from loopline.env import use_project_state
from loopline.paths import ProjectPaths


@task(task_run_name="hyperparameter search")
def search(root: str, n_trials: int | None, timeout_minutes: float | None, workers: int) -> dict[str, Any]:
    from tuning.search import tune

    return tune(ProjectPaths(Path(root)), n_trials=n_trials, timeout_minutes=timeout_minutes, workers=workers).to_dict()


def search_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Hyperparameter search: study {summary['study']}",
        "",
        f"Sampler {summary['sampler']}, pruner {summary['pruner']}; trials: "
        + ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
        + ".",
        "",
        f"**Best: trial {summary['best_trial']}**, validation loss {summary['best_value']:.5g}.",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in summary["best_overrides"].items()]
    if summary["best_val_metrics"]:
        lines += ["", "| validation metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in summary["best_val_metrics"].items()]
    if summary["ensemble_trials"]:
        lines += ["", f"Ensemble of trials {summary['ensemble_trials']} written to tuned.yaml."]
    return "\n".join(lines)


@flow(name="tuning", log_prints=True, persist_result=True)
def tuning(
    n_trials: int | None = None, timeout_minutes: float | None = None, workers: int = 1, train: bool = True
) -> dict[str, Any]:
    """Search, write tuned.yaml, then (by default) train, gate and promote the winner."""
    paths = ProjectPaths.here()
    use_project_state(paths)
    for stage in ("ingest", "prepare"):
        stage_task(str(paths.root), stage)
    summary = search(str(paths.root), n_trials, timeout_minutes, workers)
    create_markdown_artifact(search_markdown(summary), key="tuning-report", description=f"study {summary['study']}")
    print(f"best trial {summary['best_trial']}: validation loss {summary['best_value']:.5g}")
    outcome = training(in_place=True) if train else None  # on the tuned.yaml just written here
    return {"search": summary, "training": outcome}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int)
    parser.add_argument("--timeout-minutes", type=float)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-train", action="store_true", help="stop after writing tuned.yaml")
    args = parser.parse_args(argv)
    result = tuning(
        n_trials=args.trials, timeout_minutes=args.timeout_minutes, workers=args.workers, train=not args.no_train
    )
    training_outcome = result["training"]
    print(
        json.dumps(
            {
                "search": result["search"],
                "training": {k: v for k, v in (training_outcome or {}).items() if k != "gate"},
            },
            indent=2,
            default=str,
        )
    )
    return 0 if training_outcome is None or training_outcome["promoted"] or training_outcome["gate_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
