"""Automated retrainings are recorded in git (a commit on a branch, or a DVC experiment) in a worktree of
the project's HEAD: a person's uncommitted edits are neither used, committed nor touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loopline.gitrecord import commit_run, git, open_worktree, save_experiment
from loopline.paths import ProjectPaths

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> ProjectPaths:
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    root = tmp_path / "project"
    (root / "data/external/batches").mkdir(parents=True)
    (root / "data/external/batches/.gitkeep").touch()
    (root / "params.yaml").write_text("seed: 42\n")
    (root / ".gitignore").write_text("/.state/\n")
    for args in (["git", "init", "-q", "-b", "main"], [DVC, "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(args, cwd=root, check=True)
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    return ProjectPaths(root)


def add_batch(work: ProjectPaths, name: str) -> None:
    (work.batches_dir / name).write_text("x,y\n1,2\n")
    subprocess.run([DVC, "add", "-q", f"data/external/batches/{name}"], cwd=work.root, check=True)


def test_a_retraining_commits_on_its_branch_and_leaves_the_persons_edit_alone(project: ProjectPaths) -> None:
    (project.params).write_text("seed: 7  # a person's experiment\n")  # not committed

    work = open_worktree(project, "loopline/retrain")
    assert work.root == project.state_dir / "retrain" / "worktree"
    assert work.params.read_text() == "seed: 42\n"  # the run sees the committed settings
    add_batch(work, "harvest-1.csv")
    work.params.write_text("seed: 42\ndata:\n  as_of: '2011-07-07'\n")
    commit = commit_run(work, "Retraining: one batch")

    assert git(project.root, "rev-parse", "loopline/retrain") == commit
    changed = git(project.root, "show", "--name-only", "--format=%s", commit).splitlines()
    assert changed[0] == "Retraining: one batch"
    assert {"params.yaml", "data/external/batches/harvest-1.csv.dvc", "data/external/batches/.gitignore"} <= set(
        changed
    )
    assert "harvest-1.csv" not in " ".join(c for c in changed if not c.endswith((".dvc", ".gitignore")))
    assert project.params.read_text() == "seed: 7  # a person's experiment\n"  # not lost
    assert git(project.root, "status", "--porcelain") == "M params.yaml"  # and nothing else appeared
    assert git(project.root, "rev-parse", "HEAD") != commit  # the person's branch did not move


def test_the_next_retraining_starts_from_what_the_person_committed_since(project: ProjectPaths) -> None:
    work = open_worktree(project, "loopline/retrain")
    add_batch(work, "harvest-1.csv")
    commit_run(work, "Retraining: one batch")
    (project.root / "schemas").mkdir()
    (project.root / "schemas/new.yaml").write_text("name: new\n")
    git(project.root, "add", "schemas")
    git(project.root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a new schema")

    again = open_worktree(project, "loopline/retrain")
    assert (again.root / "schemas/new.yaml").is_file() and (again.batches_dir / "harvest-1.csv.dvc").is_file()
    head = git(project.root, "rev-parse", "HEAD")
    assert (
        subprocess.run(["git", "merge-base", "--is-ancestor", head, "loopline/retrain"], cwd=project.root).returncode
        == 0
    )


def test_as_dvc_experiments_the_branch_stays_and_each_run_is_an_experiment_holding_every_batch(
    project: ProjectPaths,
) -> None:
    work = open_worktree(project, "loopline/retrain")
    tip = git(project.root, "rev-parse", "loopline/retrain")
    add_batch(work, "harvest-1.csv")
    first = save_experiment(work, "retrain-1")
    add_batch(work, "harvest-2.csv")
    second = save_experiment(work, "retrain-2")

    assert git(project.root, "rev-parse", "loopline/retrain") == tip
    assert first != second and git(project.root, "rev-parse", f"{second}^") == tip
    files = git(project.root, "ls-tree", "-r", "--name-only", second).splitlines()
    assert {"data/external/batches/harvest-1.csv.dvc", "data/external/batches/harvest-2.csv.dvc"} <= set(files)
    assert not any(f.startswith(".state") for f in files)
