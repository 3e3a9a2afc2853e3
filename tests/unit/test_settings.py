"""Every environment variable is read in one place, typed, and listed in the README from there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO
from loopline.errors import ConfigError
from loopline.settings import Settings, markdown_table


def test_the_readme_lists_every_variable_as_the_settings_module_defines_it() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("<!-- settings table: python -m loopline.settings -->\n", 1)[1].split("<!--", 1)[0]
    assert table == markdown_table(), "regenerate the README's table with `python -m loopline.settings`"


def test_no_module_reads_a_loopline_variable_but_the_settings_module() -> None:
    readers = []
    for path in REPO.glob("*/*.py"):
        if path.parts[-2] in ("tests", "benchmarks", ".venv") or path.name == "settings.py":
            continue
        reads = r"environ\.get\(\s*[\"']LOOPLINE_|environ\[[\"']LOOPLINE_\w*[\"']\](?!\s*=[^=])"
        if re.search(reads, path.read_text()):
            readers.append(str(path.relative_to(REPO)))
    assert not readers, f"read LOOPLINE_* through loopline.settings: {readers}"


def test_values_are_typed_and_a_bad_one_names_its_variable() -> None:
    settings = Settings.from_env(
        {
            "LOOPLINE_MAX_RECORDS": "50",
            "LOOPLINE_ACCESS_LOG": "yes",
            "LOOPLINE_REGISTRY": "/srv/registry",
            "LOOPLINE_SWAP_POLL_SECONDS": "0.5",
        }
    )
    assert (settings.max_records, settings.access_log, settings.registry, settings.swap_poll_seconds) == (
        50,
        True,
        Path("/srv/registry"),
        0.5,
    )
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ConfigError, match="LOOPLINE_MAX_RECORDS='many': expected int"):
        Settings.from_env({"LOOPLINE_MAX_RECORDS": "many"})
    with pytest.raises(ConfigError, match="LOOPLINE_ACCESS_LOG='maybe'"):
        Settings.from_env({"LOOPLINE_ACCESS_LOG": "maybe"})
