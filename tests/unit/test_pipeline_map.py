"""dvc.yaml is the map: every stage depends on each module its command imports, so a code change reruns
exactly the stages it can affect, and the committed dvc.lock matches the code and params beside it."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PROJECT_PACKAGES = ("loopline", "dataprep", "models", "tuning", "release", "serving", "monitoring", "flows")
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PROJECT_PACKAGES:
        return None
    for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module the file imports, at the top or inside a function (lazy imports run too)."""
    found = set()
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def import_closure(module: str) -> set[Path]:
    todo, seen = [module], set()
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path))
    return {p for p in seen if not only_a_docstring(p)}


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", list(PIPELINE))
def test_each_stage_depends_on_every_module_its_command_imports(stage: str) -> None:
    command = PIPELINE[stage]["cmd"]
    assert command.startswith("python -m "), f"{stage}: {command!r} is not a `python -m` entry point"
    module = command.split()[2]
    deps = PIPELINE[stage].get("deps", [])
    missing = sorted(p.relative_to(REPO).as_posix() for p in import_closure(module) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not list them under deps"


def same_setting(a: object, b: object) -> bool:
    """Equal settings, reading numbers PyYAML leaves as text ('1e-07': YAML 1.1 wants a dot) as numbers."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_setting(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_setting(x, y) for x, y in zip(a, b))
    if isinstance(a, str) != isinstance(b, str):
        try:
            return float(a) == float(b)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    return a == b


def test_the_committed_lock_records_the_code_and_params_beside_it() -> None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(lock) == set(PIPELINE), "dvc.lock and dvc.yaml name different stages: run `dvc repro`"
    stale = []
    for stage, record in lock.items():
        declared = {d if isinstance(d, str) else next(iter(d)) for d in PIPELINE[stage].get("deps", [])}
        if {dep["path"] for dep in record.get("deps", [])} != declared:
            stale.append(f"{stage}: deps")
        for dep in record.get("deps", []):
            path = REPO / dep["path"]
            if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{stage}: {dep['path']}")
        for key, value in record.get("params", {}).get("params.yaml", {}).items():
            node = params
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if not same_setting(node, value):
                stale.append(f"{stage}: params.yaml {key}")
    assert not stale, f"dvc.lock is stale (run `dvc repro` and commit it): {stale}"
