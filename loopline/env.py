"""Keep tools' state (Prefect, BentoML, DVC's site cache) inside the project unless the user says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loopline.errors import LooplineError
from loopline.paths import ProjectPaths


class ToolFailed(LooplineError):
    pass


def tool(name: str) -> str:
    """A command installed beside this interpreter (dvc, bentoml, prefect), else the bare name (PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def run_dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dvc <args>` in `root`; a failure (with `check`) is a ToolFailed quoting what DVC said."""
    proc = subprocess.run([tool("dvc"), *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ToolFailed(f"dvc {' '.join(args)} (in {root}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def use_project_state(paths: ProjectPaths | None = None) -> None:
    """Point tool homes at .state/ (git-ignored); variables the user already set win."""
    paths = paths or ProjectPaths.here()
    state = paths.state_dir
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ.setdefault("BENTOML_HOME", str(state / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The embedded (ephemeral) Prefect server migrates a new database on first use: 20 s is not enough on
    # a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state / "dvc-site-cache"))
