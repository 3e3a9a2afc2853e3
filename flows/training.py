"""The `training` flow: harvest, the DVC stages as tasks, a recorded commit, then the gate and promotion.

    python -m flows.training [--as-of 2011-06-30] [--no-harvest]

With `retrain.record: branch` in a git project the run happens in a clean worktree on `retrain.branch`
(loopline/gitrecord.py): the harvest writes its batch there, the stages run there, and the params it
changed, dvc.lock and the batch's .dvc file are committed before the candidate is registered, so its
lineage names a clean commit. Otherwise it runs in the project directory.

Each stage is `dvc repro --single-item <stage>`: DVC decides whether it reruns, and a stage that fails
leaves its last good outputs. A stage is retried on failures that look transient (a DVC lock held by
another run, I/O timeouts); a data or configuration error fails at once. `as_of` moves params.yaml's
`data.as_of` first. A candidate the gate rejects ends the flow with `promoted: false` and its gate table,
and an alert email; a failed run is emailed too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from loopline.env import tool, use_project_state
from loopline.paths import ProjectPaths

TRAINING_LIMIT = "loopline-training"
"""The global concurrency limit (1 slot) a training run holds on a Prefect server: one run at a time."""
STAGES = ("ingest", "prepare", "baselines", "train", "evaluate", "export")
TRANSIENT = ("Unable to acquire lock", "Resource temporarily unavailable", "timed out", "Connection reset")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, output: str) -> None:
        super().__init__(f"stage {stage!r} failed; its last good outputs are kept. DVC said:\n{output[-3000:]}")
        self.stage, self.output = stage, output


def repro_stage(root: Path, stage: str) -> str:
    """`dvc repro --single-item <stage>` with this interpreter's tools first on PATH."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LOOPLINE_ROOT": str(root),  # the stage runs where DVC runs it (the worktree, for a recorded run)
    }
    proc = subprocess.run(
        [tool("dvc"), "repro", "--single-item", stage],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise StageFailed(stage, proc.stdout + proc.stderr)
    return proc.stdout


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return any(marker in exc.output for marker in TRANSIENT)
    except Exception:
        return False
    return False


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, task_run_name="dvc repro {stage}")
def stage_task(root: str, stage: str) -> str:
    return repro_stage(Path(root), stage)


def set_as_of(paths: ProjectPaths, as_of: str | None) -> None:
    from loopline.config import update_params_file

    if (yaml.safe_load(paths.params.read_text()) or {}).get("data", {}).get("as_of") != as_of:
        update_params_file(paths.params, {"data.as_of": as_of})


def gate_and_promote(
    paths: ProjectPaths, registry_root: Path | None = None, recorded: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register the candidate built under `paths` in the project's registry (`registry_root`, default the
    same project) with its git record. If the gate passed: the first model is promoted; later ones go to
    shadow as the challenger (promote.live), promoted by a monitoring check once they beat production on
    live traffic, or are promoted at once (promote.live: false). Never forces."""
    from loopline.config import load_params
    from loopline.registry import Registry
    from monitoring.check import LoopState
    from release.promote import PromotionRefused, end_shadow, promote, register_candidate, start_shadow
    from release.recalibrate import is_recalibration

    project = ProjectPaths(registry_root or paths.root)
    registry = Registry.for_project(project.root)
    version, report, _ = register_candidate(paths, registry, recorded)
    outcome: dict[str, Any] = {
        "version": version.id,
        "gate_passed": report.passed,
        "gate": report.to_dict(),
        "gate_summary": report.summary(),
        "metrics": version.metadata["metrics"]["model"],
        "production_before": registry.production(),
        "commit": version.metadata.get("git", {}).get("commit"),
        "harvested": version.metadata.get("harvested", []),
    }
    if not report.passed:
        if outcome["production_before"] is not None:
            with LoopState(project.incidents).update() as state:
                state["failed_candidates"] += 1
        return {**outcome, "promoted": False, "shadow": False, "reason": "the candidate did not pass the gate"}
    production = outcome["production_before"]
    try:
        if production is not None and production != version.id and load_params(paths.params).promote.live:
            start_shadow(registry, version.id, "challenger", {"reason": "passed the gate", "production": production})
            for older, role in registry.shadows().items():  # a level correction competes on its own
                if role == "challenger" and older != version.id and not is_recalibration(registry.get(older)):
                    end_shadow(registry, older, {"reason": f"superseded by {version.id}, trained on newer data"})
            return {
                **outcome,
                "promoted": False,
                "shadow": True,
                "reason": f"passed the gate; scored in shadow beside {production[:8]} until it beats it on live traffic",
            }
        result = promote(paths, registry, version.id)
    except PromotionRefused as exc:
        return {**outcome, "promoted": False, "shadow": False, "reason": str(exc)}
    return {
        **outcome,
        "promoted": result["changed"],
        "shadow": False,
        "reason": "promoted" if result["changed"] else "already the production model",
    }


def prefect_server_url() -> str | None:
    """The Prefect API this process talks to, or None in the embedded (ephemeral) mode."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def ensure_training_limit() -> None:
    """Create the global concurrency limit with one slot unless it exists (a person may have raised it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=TRAINING_LIMIT, limit=1))
            except ObjectAlreadyExists:
                pass  # another run created it first


@contextmanager
def training_slot() -> Iterator[None]:
    """One training run per project at a time, however it started: a deployment run (prefect.yaml also
    limits the training deployment to one run), a subflow of the tuning or monitoring flow, or a person's
    `python -m flows.training`. With a Prefect server the run holds the global concurrency limit
    `loopline-training`, and a second run waits for it. The embedded mode has no shared server: there
    DVC's lock on the project keeps two runs from writing the same outputs."""
    if prefect_server_url() is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    ensure_training_limit()
    print(f"taking the training slot ({TRAINING_LIMIT}); waits while another training run holds it")
    with concurrency(TRAINING_LIMIT, occupy=1, strict=True):
        print("training slot taken")
        yield


@task(task_run_name="open the retraining worktree")
def worktree_task(project: ProjectPaths, in_place: bool = False) -> ProjectPaths:
    """Where this run happens: a clean worktree on retrain.branch, or the project itself."""
    from loopline.config import load_params
    from loopline.gitrecord import is_git_repo, open_worktree

    params = load_params(project.params)
    if in_place or params.retrain.record == "off" or not is_git_repo(project.root):
        return project
    work = open_worktree(project, params.retrain.branch)
    # The served traffic and its labels stay the project's, wherever the run happens.
    os.environ.setdefault("LOOPLINE_REQUEST_LOG", str(project.request_log_dir))
    os.environ.setdefault("LOOPLINE_GROUND_TRUTH", str(project.ground_truth_dir))
    return work


@task(task_run_name="harvest the labelled traffic")
def harvest_task(work: ProjectPaths) -> dict[str, Any]:
    from dataprep.harvest import run_harvest

    return run_harvest(work).to_dict()


@task(task_run_name="record the run in git")
def record_task(work: ProjectPaths, as_of: str | None, harvested: dict[str, Any] | None) -> dict[str, Any] | None:
    """A commit on retrain.branch, or a DVC experiment: the git record the candidate's lineage names."""
    from datetime import datetime, timezone

    from loopline.config import load_params
    from loopline.gitrecord import commit_run, save_experiment

    if load_params(work.params).retrain.record == "experiment":
        name = f"retrain-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        return {"commit": save_experiment(work, name), "dirty": False, "experiment": name}
    what = [f"{harvested['rows']} harvested rows in {harvested['batch']}"] if harvested and harvested["batch"] else []
    if as_of is not None:
        what.append(f"data.as_of {as_of}")
    commit_run(work, "Retraining: " + ("; ".join(what) or "the pipeline rerun on the recorded data"))
    return None  # the lineage reads the new HEAD itself


def report_markdown(outcome: dict[str, Any]) -> str:
    lines = [
        f"# Training run: candidate {outcome['version']}",
        "",
        f"**{'Promoted' if outcome['promoted'] else 'In shadow' if outcome.get('shadow') else 'Not promoted'}**: "
        f"{outcome['reason']}.",
        "",
        f"Commit {outcome.get('commit') or 'unknown'}; harvested batches in its data: "
        + (
            ", ".join(f"{b['file']} ({sum(b['rows'].values())} rows)" for b in outcome.get("harvested") or []) or "none"
        ),
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v:.4g} |" for k, v in outcome["metrics"].items()]
    lines += ["", "## Gate", "", "| rule | value | needed | passed | detail |", "|---|---:|---|---|---|"]
    for rule in outcome["gate"].get("rules", []):
        value = f"{rule['value']:.4g}" if isinstance(rule.get("value"), (int, float)) else rule.get("value")
        detail = str(rule.get("detail", "")).replace("|", "/")
        lines.append(
            f"| {rule['name']} | {value} | {rule.get('threshold', '')} | "
            f"{'yes' if rule['passed'] else 'NO'} | {detail} |"
        )
    return "\n".join(lines)


def _alert_failure(flow: Any, flow_run: Any, state: Any) -> None:
    from monitoring.check import alert_params, deliver, queue_alert

    paths = ProjectPaths.here()
    alerts = alert_params(paths)
    queue_alert(
        paths,
        alerts,
        f"training run {flow_run.name} failed",
        f"The training flow run {flow_run.name} failed: {state.message}\n\nThe production model is unchanged; "
        "each stage's last good outputs are kept.",
    )
    deliver(paths, alerts)


@flow(name="training", log_prints=True, on_failure=[_alert_failure], persist_result=True)
def training(
    as_of: str | None = None, keep_as_of: bool = True, harvest: bool = True, in_place: bool = False
) -> dict[str, Any]:
    """Harvest, run the pipeline (DVC decides what reruns), record it, then the gate; promote a candidate
    that passes. `in_place`: in the project directory as it is, whatever retrain.record says (the
    tuning flow trains on the tuned.yaml it just wrote there)."""
    project = ProjectPaths.here()
    use_project_state(project)
    with training_slot():
        outcome = _train(project, as_of, keep_as_of, harvest, in_place)
    print(("promoted " if outcome["promoted"] else "not promoted ") + f"{outcome['version']}: {outcome['reason']}")
    # A rejected candidate is no email of its own: production is unchanged, and while production is
    # degraded the monitoring check escalates after promote.escalate_after failed candidates.
    return outcome


def _train(project: ProjectPaths, as_of: str | None, keep_as_of: bool, harvest: bool, in_place: bool) -> dict[str, Any]:
    work = worktree_task(project, in_place)
    harvested = harvest_task(work) if harvest else None
    if not keep_as_of or as_of is not None:
        set_as_of(work, as_of)
    for stage in STAGES:
        stage_task(str(work.root), stage)
    recorded = record_task(work, as_of, harvested) if work.root != project.root else None
    outcome = gate_and_promote(work, registry_root=project.root, recorded=recorded)
    outcome["harvest"] = harvested
    create_markdown_artifact(
        report_markdown(outcome), key="training-report", description=f"candidate {outcome['version']}"
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-of", help="set data.as_of first (a date or date-time on the time column)")
    parser.add_argument("--no-harvest", action="store_true", help="train without harvesting the served traffic")
    args = parser.parse_args(argv)
    outcome = training(as_of=args.as_of, keep_as_of=args.as_of is None, harvest=not args.no_harvest)
    print(json.dumps({k: v for k, v in outcome.items() if k != "gate"}, indent=2, default=str))
    return 0 if outcome["promoted"] or outcome["gate_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
