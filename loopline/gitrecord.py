"""Automated retrainings as git commits: a clean worktree of the project on its own branch.

The training flow (retrain.record: branch) does not run in the project directory a person works in. It
opens a git worktree under .state/retrain/worktree on `retrain.branch`, brought up to the project's HEAD
(merged when the person committed since), points it at the project's DVC cache, runs the stages there and
commits what the run changed: params.yaml (a new `data.as_of`), dvc.lock, the metrics DVC leaves to git,
and the harvested batches' .dvc files. The model's lineage then names a clean commit, `git log <branch>` reads as the model's
history, and a person's uncommitted edits are neither used, committed nor touched. With
`retrain.record: experiment` each run is saved as a DVC experiment on top of the branch instead
(`dvc exp show`, `dvc exp apply <name>`), and the branch does not move.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from loopline.env import run_dvc
from loopline.errors import LooplineError
from loopline.paths import ProjectPaths

AUTHOR = {"user.name": "Loopline", "user.email": "loopline@localhost"}


class GitRecordError(LooplineError):
    pass


def git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise GitRecordError(f"git {' '.join(args)} (in {root}): {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def is_git_repo(root: Path) -> bool:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    return proc.returncode == 0 and Path(proc.stdout.strip()).resolve() == root.resolve()


def _identity(root: Path) -> list[str]:
    """`-c user.name=... -c user.email=...` where git has no identity configured for the project."""
    args: list[str] = []
    for key, value in AUTHOR.items():
        if not git(root, "config", key, check=False):
            args += ["-c", f"{key}={value}"]
    return args


def open_worktree(project: ProjectPaths, branch: str) -> ProjectPaths:
    """The retraining worktree on `branch`, at or after the project's HEAD, with the DVC-tracked data and
    outputs checked out from the project's cache."""
    where = project.state_dir / "retrain" / "worktree"
    head = git(project.root, "rev-parse", "HEAD")
    git(project.root, "worktree", "prune")
    registered = git(project.root, "worktree", "list", "--porcelain")
    if f"worktree {where.resolve()}" not in registered:
        if where.exists():
            raise GitRecordError(f"{where} exists but is not a git worktree of {project.root}; move it away")
        has_branch = bool(git(project.root, "branch", "--list", branch))
        where.parent.mkdir(parents=True, exist_ok=True)
        if has_branch:
            git(project.root, "worktree", "add", "-q", str(where), branch)
        else:
            git(project.root, "worktree", "add", "-q", "-b", branch, str(where), head)
    if not _contains(where, head):  # the person committed since the last retraining
        merged = subprocess.run(
            ["git", *_identity(where), "merge", "--no-edit", "-q", "-X", "theirs", head],
            cwd=where,
            capture_output=True,
            text=True,
        )
        if merged.returncode != 0:
            git(where, "merge", "--abort", check=False)
            raise GitRecordError(
                f"cannot bring {branch} up to the project's HEAD {head[:12]}: {merged.stderr.strip()}; "
                f"merge it by hand (git checkout {branch} && git merge {head[:12]})"
            )
    cache = (project.root / ".dvc" / "cache").resolve()
    run_dvc(where, "config", "--local", "cache.dir", str(cache))
    run_dvc(where, "checkout", "-q", check=False)  # what the cache lacks, the stages rebuild
    return ProjectPaths(where)


def _contains(where: Path, commit: str) -> bool:
    return subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=where).returncode == 0


def commit_run(work: ProjectPaths, message: str) -> str:
    """Commit everything the run changed or added that git does not ignore (the worktree holds nothing
    else): params.yaml, dvc.lock, the batches' .dvc files, the .gitignore entries and the metrics and plots
    DVC leaves to git. The commit (HEAD when nothing changed)."""
    git(work.root, "add", "--all")
    git(work.root, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", ".state")  # tool state, never
    if git(work.root, "diff", "--cached", "--name-only"):
        git(work.root, *_identity(work.root), "commit", "-q", "-m", message)
    return git(work.root, "rev-parse", "HEAD")


def save_experiment(work: ProjectPaths, name: str) -> str:
    """Save the run as the DVC experiment `name` (a commit under refs/exps whose parent is the worktree's
    HEAD; the worktree keeps its state, so harvested batches accumulate from run to run); its commit."""
    untracked = [
        f
        for f in git(work.root, "ls-files", "--others", "--exclude-standard").splitlines()
        if f and not f.startswith(".state/")
    ]
    include = [arg for f in untracked for arg in ("--include-untracked", f)]
    run_dvc(work.root, "exp", "save", "--force", "--name", name, *include)
    refs = git(work.root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").splitlines()
    found = [line.split()[0] for line in refs if line.endswith(f"/{name}")]
    if not found:
        raise GitRecordError(f"dvc exp save -n {name} left no experiment ref in {work.root}")
    return found[0]
