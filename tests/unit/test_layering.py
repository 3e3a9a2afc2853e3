"""The release path, monitoring, the flows that run it and the service need no PyTorch: they work on the
ONNX file and the records the pipeline left. Checked on every import, lazy ones included."""

from __future__ import annotations

import pytest
from test_pipeline_map import imported_modules, module_file

TORCH_FREE = [
    "release.cli",
    "release.promote",
    "release.store",
    "monitoring.check",
    "flows.training",
    "dataprep.harvest",
    "flows.monitor",
    "flows.demo",
    "serving.service",
]


def imports_reached(module: str) -> tuple[set[str], set[str]]:
    """(project modules, outside top-level packages) that `module` imports, directly or not."""
    todo, project, outside = [module], set(), set()
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None:
            outside.add(name.split(".")[0])
            continue
        if name in project:
            continue
        project.add(name)
        todo.extend(imported_modules(path))
    return project, outside


@pytest.mark.parametrize("module", TORCH_FREE)
def test_the_release_path_monitoring_and_serving_never_import_torch(module: str) -> None:
    project, outside = imports_reached(module)
    assert "torch" not in outside, f"{module} reaches torch"
    trainers = sorted(m for m in project if m.startswith("models."))
    assert not trainers, f"{module} reaches {trainers} (PyTorch's side of the project)"
