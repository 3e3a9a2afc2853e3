"""Shared fixtures: a real Loopline project (git + DVC) in a temporary directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from loopline import paths

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = list(paths.PROJECT_FILES)


# tests/unit: pure functions, no subprocess, no server (`make test-fast`, well under a minute);
# tests/integration: real DVC projects, `bentoml serve`, Prefect, SMTP and training runs. Marked by folder.
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Project:
    """A throw-away Loopline checkout with its own git repository, DVC cache and DVC remote."""

    def __init__(self, root: Path, remote: Path) -> None:
        self.root = root
        self.remote = remote

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["DVC_SITE_CACHE_DIR"] = str(self.root / ".state" / "dvc-site-cache")
        env["BENTOML_HOME"] = str(self.root / ".state" / "bentoml")
        env["BENTOML_DO_NOT_TRACK"] = "true"
        env["PREFECT_HOME"] = str(self.root / ".state" / "prefect")
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        for variable in (
            "PREFECT_API_URL",
            "LOOPLINE_OUTBOX",
            "LOOPLINE_SMTP_HOST",
            "LOOPLINE_SMTP_BLOCK",
            "LOOPLINE_REQUEST_LOG",
            "LOOPLINE_GROUND_TRUTH",
        ):
            env.pop(variable, None)
        env.pop("LOOPLINE_REGISTRY", None)
        env["DVC_NO_ANALYTICS"] = "1"
        env.pop("LOOPLINE_ROOT", None)
        return env

    def run(self, *args: str, check: bool = True) -> CommandResult:
        proc = subprocess.run(list(args), cwd=self.root, env=self.env(), capture_output=True, text=True)
        result = CommandResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{result.output}")
        return result

    def loopline(self, *args: str, check: bool = True) -> CommandResult:
        return self.run(sys.executable, "-m", "release.cli", *args, check=check)

    def dvc(self, *args: str, check: bool = True) -> CommandResult:
        return self.run(str(Path(sys.executable).parent / "dvc"), *args, check=check)

    def git(self, *args: str) -> CommandResult:
        return self.run("git", *args)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def set_params(self, **sections: dict) -> None:
        """Merge settings into params.yaml, e.g. set_params(data={"source": "acs"})."""
        path = self.root / "params.yaml"
        params = yaml.safe_load(path.read_text())
        for section, values in sections.items():
            if isinstance(values, dict):
                params.setdefault(section, {}).update(values)
            else:
                params[section] = values
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def path(self, relative: str) -> Path:
        return self.root / relative

    def read_parquet(self, relative: str) -> pd.DataFrame:
        return pd.read_parquet(self.root / relative)

    def fingerprint(self, *relatives: str) -> dict[str, str]:
        """Content hash of every file under the given paths: to show that outputs were left untouched."""
        out = {}
        for relative in relatives:
            base = self.root / relative
            files = sorted(base.rglob("*")) if base.is_dir() else [base]
            for f in files:
                if f.is_file():
                    out[str(f.relative_to(self.root))] = hashlib.sha256(f.read_bytes()).hexdigest()
        return out


def new_project(base: Path) -> Project:
    """A fresh Loopline project under `base`: the project files, git, DVC and a local DVC remote."""
    root = base / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    proj = Project(root, remote=base / "dvc-remote")
    proj.git("init", "-q", "-b", "main")
    proj.git("config", "user.email", "tests@loopline.invalid")
    proj.git("config", "user.name", "Loopline tests")
    proj.dvc("init", "-q")
    proj.dvc("config", "core.analytics", "false")
    proj.dvc("remote", "add", "-d", "local", str(proj.remote))
    proj.dvc("config", "plots.html_template", "../tools/dvc_plots/template.html")
    proj.commit("a fresh Loopline project")
    return proj


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return new_project(tmp_path)


OUTPUTS = ("data/raw", "data/prepared", "reports/data")


def sensor_frame(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """A small, valid dataset in the shape of schemas written by users (see sensor_schema)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=rows, freq="h")
    site = rng.choice(["north", "south", "east"], size=rows)
    temp = rng.uniform(0, 40, size=rows).round(2)
    load = (50 + 2 * temp + rng.normal(0, 5, size=rows)).clip(0).round(1)
    return pd.DataFrame({"ts": ts.strftime("%Y-%m-%d %H:%M:%S"), "site": site, "temp": temp, "load": load})


SENSOR_SCHEMA = {
    "name": "sensors",
    "task": "regression",
    "target": "load",
    "time_column": "ts",
    "columns": {
        "ts": {"kind": "datetime"},
        "site": {"kind": "categorical", "categories": ["north", "south", "east"]},
        "temp": {"kind": "numeric", "min": -30, "max": 60},
        "load": {"kind": "numeric", "min": 0},
    },
}


@pytest.fixture
def sensor_project(project: Project) -> Project:
    """A project whose source is a user's CSV file described by a user's schema."""
    (project.root / "schemas" / "sensors.yaml").write_text(yaml.safe_dump(SENSOR_SCHEMA, sort_keys=False))
    sensor_frame().to_csv(project.root / "data/external/sensors.csv", index=False)
    project.set_params(data={"source": "file", "path": "data/external/sensors.csv", "schema": "schemas/sensors.yaml"})
    project.commit("use the sensors CSV")
    return project


# ------------------------------------------------------------------------------------------- serving
FAST_TRAIN = {"checks": {"skip": ["input_independent_baseline"]}}


def registered_id(output: str) -> str:
    return output.splitlines()[0].split(": ")[1]


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[Project, str, str, Path]:
    """A bike project whose pipeline ran twice (two different models), both registered, none promoted;
    the registry is kept aside as a seed that each test copies back."""
    proj = new_project(tmp_path_factory.mktemp("registry"))
    proj.set_params(train=FAST_TRAIN)
    proj.dvc("repro")
    first = registered_id(proj.loopline("register").stdout)
    proj.set_params(train={**FAST_TRAIN, "model": {"hidden": [32]}})
    proj.dvc("repro")
    second = registered_id(proj.loopline("register").stdout)
    assert first != second
    seed = proj.root.parent / "seed-registry"
    shutil.move(proj.root / "registry", seed)
    return proj, first, second, seed


def reset_registry(built: tuple[Project, str, str, Path]) -> Project:
    """The built project with a fresh copy of the two-version registry."""
    proj, _, _, seed = built
    shutil.rmtree(proj.root / "registry", ignore_errors=True)
    shutil.copytree(seed, proj.root / "registry")
    return proj


def feature_records(project: Project, version: str, rows: int) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """The first `rows` test rows as request records (the model's features only), and the rows themselves."""
    from loopline.schema import load_schema

    schema = load_schema(project.path(f"registry/versions/{version}/schema.json"))
    test = project.read_parquet("data/prepared/test.parquet").head(rows)
    return json.loads(test[[c.name for c in schema.features]].to_json(orient="records")), test


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve serving.service:Predictor` in a project, as a user starts it, on 127.0.0.1."""

    def __init__(self, project: Project, env: dict[str, str], log: Path) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        bentoml = str(Path(sys.executable).parent / "bentoml")
        self.process = subprocess.Popen(
            [bentoml, "serve", "serving.service:Predictor", "--host", "127.0.0.1", "--port", str(port)],
            cwd=project.root,
            env={**project.env(), **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2):  # probes need no key
                    return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
                time.sleep(0.5)
        raise TimeoutError(f"service not ready after {timeout} s:\n{self.log.read_text()}")

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        return self.request("POST", path, body, headers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        return self.request("GET", path, None, headers)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def serving(project: Project, log: Path | None = None, **env: str) -> Iterator[Server]:
    server = Server(project, env, log or project.root / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _tools_postgres() -> Any:
    """tools/postgres.py (a script, not a package): PostgreSQL on 127.0.0.1 from the pgserver wheel."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loopline_tools_postgres", REPO / "tools" / "postgres.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Any]:
    """A real PostgreSQL 16 server on 127.0.0.1 for the session (tools/postgres.py)."""
    tools = _tools_postgres()
    server = tools.start(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server
    finally:
        tools.stop(server.data_dir)


def wait_until(condition: Any, timeout: float, what: str, interval: float = 1.0) -> Any:
    """Poll `condition()` until it returns something truthy; `what()` says why not after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout} s: {what()}")
        time.sleep(interval)


class PrefectServer:
    """`prefect server start` on 127.0.0.1 with its database at `database_url`, as a user runs it."""

    def __init__(self, project: Project, database_url: str, logs: Path) -> None:
        port = free_port()
        self.api = f"http://127.0.0.1:{port}/api"
        self.logs = logs
        self.project = project
        self.bin = Path(sys.executable).parent
        self.env = {
            **project.env(),
            "PREFECT_API_URL": self.api,
            "PREFECT_HOME": str(project.root / ".state" / "prefect-server"),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # workers look for scheduled runs every 2 s (10 by default)
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        }
        logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.server = self.start("server", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port))
        wait_until(self.healthy, 180, lambda: self.log("server"))

    def start(self, name: str, *command: str) -> subprocess.Popen:
        executable = command[0] if command[0] == sys.executable else str(self.bin / command[0])
        process = subprocess.Popen(
            [executable, *command[1:]],
            cwd=self.project.root,
            env=self.env,
            stdout=(self.logs / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()[-4000:]

    def healthy(self) -> bool:
        assert self.server.poll() is None, self.log("server")
        try:
            with urllib.request.urlopen(f"{self.api}/health", timeout=2):
                return True
        except OSError:
            return False

    def cli(self, *args: str, timeout: float = 300) -> CommandResult:
        proc = subprocess.run(
            [str(self.bin / "prefect"), *args],
            cwd=self.project.root,
            env={**self.env, "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = CommandResult(proc.returncode, proc.stdout, proc.stderr)
        assert proc.returncode == 0, f"prefect {' '.join(args)} failed ({proc.returncode}):\n{result.output}"
        return result

    def post(self, path: str, body: dict) -> Any:
        request = urllib.request.Request(
            self.api + path, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def deployment(self, name: str) -> dict:
        """GET /deployments/name/<flow>/<deployment>."""
        with urllib.request.urlopen(f"{self.api}/deployments/name/{name}", timeout=30) as response:
            return json.loads(response.read())

    def flow_runs(self, flow: str) -> list[dict]:
        return self.post("/flow_runs/filter", {"flows": {"name": {"any_": [flow]}}, "sort": "START_TIME_ASC"})

    def states(self, flow_run_id: str) -> list[str]:
        with urllib.request.urlopen(f"{self.api}/flow_run_states/?flow_run_id={flow_run_id}", timeout=30) as response:
            return [state["name"] for state in json.loads(response.read())]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
