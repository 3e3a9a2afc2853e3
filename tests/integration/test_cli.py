"""One `loopline` command for the user's jobs and the registry, each with its own --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from release.cli import JOBS


def loopline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "release.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_loopline_help_lists_every_job_and_registry_command() -> None:
    out = loopline("--help")
    assert out.returncode == 0
    for command in [*JOBS, "register", "promote", "rollback", "list", "show", "verify"]:
        assert f"loopline {command}" in out.stdout, command


@pytest.mark.parametrize("job", ["train", "cv", "tune"])
def test_a_job_passes_help_on_to_its_own_module(job: str) -> None:
    out = loopline(job, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage:") and "--help" in out.stdout


def test_importing_the_monitoring_check_and_the_release_command_loads_no_torch() -> None:
    code = "import sys, monitoring.check, release.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
