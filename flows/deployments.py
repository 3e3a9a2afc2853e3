"""The deployments as prefect.yaml declares them: one list for `prefect deploy --all` (a work pool and its
workers) and for `python -m flows.serve` (one process serves them all)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loopline.errors import ConfigError
from loopline.paths import PREFECT_YAML

STRATEGIES = ("ENQUEUE", "CANCEL_NEW")


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str
    """path/to/file.py:flow_function, relative to the project root."""
    description: str = ""
    crons: tuple[str, ...] = ()
    concurrency_limit: int | None = None
    collision_strategy: str = "ENQUEUE"
    parameters: dict[str, Any] = field(default_factory=dict)
    work_pool: str | None = None

    def load_flow(self) -> Any:
        path, function = self.entrypoint.split(":")
        module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
        return getattr(module, function)


def _spec(where: str, entry: dict[str, Any]) -> DeploymentSpec:
    for key in ("name", "entrypoint"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}: `{key}` must be a non-empty string")
    if entry["entrypoint"].count(":") != 1 or not entry["entrypoint"].split(":")[0].endswith(".py"):
        raise ConfigError(f"{where}: entrypoint {entry['entrypoint']!r} must read path/to/file.py:flow_function")
    crons = []
    for i, schedule in enumerate(entry.get("schedules") or []):
        if not isinstance(schedule, dict) or "cron" not in schedule:
            raise ConfigError(f"{where}.schedules[{i}]: only cron schedules are used here, got {schedule!r}")
        if schedule.get("timezone", "UTC") != "UTC":
            raise ConfigError(f"{where}.schedules[{i}]: schedules are in UTC, got timezone {schedule['timezone']!r}")
        crons.append(str(schedule["cron"]))
    limit = entry.get("concurrency_limit")
    strategy = "ENQUEUE"
    if isinstance(limit, dict):
        strategy = limit.get("collision_strategy", "ENQUEUE")
        limit = limit.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{where}.concurrency_limit: the limit must be a whole number >= 1, got {limit!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}.concurrency_limit.collision_strategy must be one of {STRATEGIES}, got {strategy!r}")
    return DeploymentSpec(
        name=entry["name"],
        entrypoint=entry["entrypoint"],
        description=" ".join(str(entry.get("description") or "").split()),
        crons=tuple(crons),
        concurrency_limit=limit,
        collision_strategy=strategy,
        parameters=dict(entry.get("parameters") or {}),
        work_pool=(entry.get("work_pool") or {}).get("name"),
    )


def load_deployments(root: Path) -> dict[str, DeploymentSpec]:
    """prefect.yaml's deployments by name, checked."""
    path = root / PREFECT_YAML
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read as YAML: {exc}") from exc
    entries = document.get("deployments")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: `deployments` must be a non-empty list")
    specs: dict[str, DeploymentSpec] = {}
    for i, entry in enumerate(entries):
        where = f"{path.name}: deployments[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping, got {entry!r}")
        spec = _spec(where, entry)
        if spec.name in specs:
            raise ConfigError(f"{where}: a second deployment named {spec.name!r}")
        specs[spec.name] = spec
    return specs
