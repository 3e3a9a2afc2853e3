"""The model card says what the model is, how it was judged and on what."""

from __future__ import annotations

from conftest import REPO
from loopline.schema import load_schema
from release.card import model_card


def test_the_model_card_names_the_split_the_model_was_tested_on() -> None:
    schema = load_schema(REPO / "schemas/bike.yaml")
    meta = {
        "metrics": {"rows": 10, "model": {"mae": 1.0}, "mean": {"mae": 2.0}},
        "gate": {"passed": True, "rules": [], "champion": None},
        "git": {"commit": "abc", "dirty": False},
        "data": {"outs": {}},
        "seed": 42,
        "skipped_checks": [],
        "training": {},
    }
    cards = {
        method: model_card("0" * 16, {**meta, "params": {"prepare": {"split": {"method": method}}}}, schema)
        for method in ("time", "group", "random")
    }
    assert "a held-out split later in time than its training data" in cards["time"]
    assert "groups it never saw in training" in cards["group"]
    assert "drawn at random" in cards["random"] and "later in time" not in cards["random"]
