"""The README's layout table names every package of the project, and every folder it names exists."""

from __future__ import annotations

import re

from conftest import REPO


def layout_folders() -> set[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return {name.rstrip("/") for name in re.findall(r"`([\w.-]+)/`", section)}


def test_every_package_is_in_the_layout_table_and_every_folder_there_exists() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")}
    folders = layout_folders()
    assert packages <= folders, f"missing from the README's layout table: {sorted(packages - folders)}"
    missing = {f for f in folders if not (REPO / f).is_dir()} - {"registry"}  # registry/: made by `register`
    assert not missing, f"the README's layout table names folders that do not exist: {sorted(missing)}"
