"""Flows change params.yaml the way a person would: the values, and nothing else."""

from __future__ import annotations

import shutil

import yaml

from conftest import REPO
from loopline.config import load_params, update_params_file


def test_a_changed_value_keeps_every_comment_and_the_other_values(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    before = path.read_text()
    update_params_file(path, {"data.as_of": "2011-06-30", "monitor.alerts.remind_hours": 672})
    after = path.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines()) and len(changed) == 2
    assert all("#" in b for _, b in changed)  # the comments on the changed lines stay too
    params = load_params(path)
    assert params.data.as_of == "2011-06-30" and params.monitor.alerts.remind_hours == 672
    assert yaml.safe_load(after)["train"] == yaml.safe_load(before)["train"]
    update_params_file(path, {"data.as_of": None})
    assert load_params(path).data.as_of is None and "  as_of: null" in path.read_text()
