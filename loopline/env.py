"""Keep tools' state (Prefect, BentoML, DVC's site cache) inside the project unless the user says otherwise."""

from __future__ import annotations

import os

from loopline.paths import ProjectPaths


def use_project_state(paths: ProjectPaths | None = None) -> None:
    """Point tool homes at .state/ (git-ignored); variables the user already set win."""
    paths = paths or ProjectPaths.here()
    state = paths.state_dir
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("BENTOML_HOME", str(state / "bentoml"))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(state / "dvc-site-cache"))
