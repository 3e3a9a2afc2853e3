"""The gate fails closed and judges every rule it is given."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from loopline.config import EvaluateParams, GateParams, load_params
from loopline.errors import ConfigError
from loopline.evidence import Comparison
from models.baselines import fit_baselines
from models.evaluate import evaluate
from models.torch_predict import predict
from release.gate import Evidence, judge
from release.promote import paired_comparisons
from toy import toy_data, trained_model_for

RAW_RULES = yaml.safe_load((REPO / "params.yaml").read_text())["gate"]
RULES = GateParams.model_validate(RAW_RULES)
PARITY = {"passed": True, "onnx_sha256": "abc", "max_abs_diff": 1e-6, "atol": 1e-4, "rtol": 1e-5}
CHECKS = [
    {"name": n, "passed": True, "skipped": False}
    for n in ("loss_at_init", "overfit_one_batch", "input_independent_baseline", "gradients")
]


def evidence(**overrides) -> Evidence:
    slices = {
        "c": {
            "a": {"rows": 500, "judged": True, "mae": 1.0, "rmse": 1.5},
            "b": {"rows": 500, "judged": True, "mae": 1.0, "rmse": 1.5},
            "d": {"rows": 10, "judged": False, "mae": 9.0, "rmse": 9.0},
        }
    }
    base = dict(
        metrics={"mae": 1.0, "rmse": 1.5, "r2": 0.8},
        slices=slices,
        baselines={"mean": {"mae": 3.0, "rmse": 4.0, "r2": 0.0}, "linear": {"mae": 2.0, "rmse": 2.5, "r2": 0.5}},
        checks=CHECKS,
        parity=PARITY,
        onnx_sha256="abc",
    )
    base.update(overrides)
    return Evidence(**base)


def failed(report) -> list[str]:
    return [r.name for r in report.failures]


def test_a_good_first_model_passes_and_the_report_says_there_is_no_champion() -> None:
    report = judge(RULES, evidence())
    assert report.passed, report.summary()
    assert "first model: there is no production model to compare with" in report.notes
    assert {r.name for r in report.rules} >= {
        "threshold:r2",
        "beats:mean:mae",
        "beats:linear:rmse",
        "recipe_checks",
        "export_parity",
    }
    for rule in report.to_dict()["rules"]:
        assert {"name", "value", "threshold", "passed", "detail"} <= set(rule), rule


@pytest.mark.parametrize("section", ["", "gate:\n", "gate: {}\n"], ids=["missing", "null", "empty"])
def test_a_missing_or_empty_rule_set_fails(tmp_path, section) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(section)
    report = judge(load_params(params_file).gate, evidence())
    assert not report.passed
    assert failed(report) == ["rule_set"]


@pytest.mark.parametrize(
    ("typo", "named"),
    [
        ("baseline_margn", "'baseline_margin'"),
        ("champion_tolerence", "'champion_tolerance'"),
    ],
    ids=["baseline_margn", "champion_tolerence"],
)
def test_a_mistyped_gate_key_is_refused_naming_the_valid_one(tmp_path, typo, named) -> None:
    rules = {**RAW_RULES, typo: 0.5}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"gate": rules}))
    with pytest.raises(ConfigError, match=rf"gate\.{typo}: unknown setting \(did you mean {named}\?\)"):
        load_params(params_file)


def test_a_gate_without_its_margin_is_refused_instead_of_judging_with_zero(tmp_path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"gate": {k: v for k, v in RAW_RULES.items() if k != "baseline_margin"}}))
    with pytest.raises(ConfigError, match=r"gate\.baseline_margin: Field required"):
        load_params(params_file)


def test_an_unknown_metric_or_top_level_section_is_refused_with_the_closest_name(tmp_path) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"gate": {**RAW_RULES, "compare_metrics": ["mea"]}}))
    with pytest.raises(ConfigError, match=r"gate\.compare_metrics: unknown metric 'mea' \(did you mean 'mae'\?\)"):
        load_params(params_file)
    params_file.write_text(yaml.safe_dump({"monitr": {"window_hours": 24}}))
    with pytest.raises(ConfigError, match=r"monitr: unknown setting \(did you mean 'monitor'\?\)"):
        load_params(params_file)


def test_rules_that_do_not_apply_to_the_task_fail_instead_of_passing_vacuously() -> None:
    rules = RULES.model_copy(
        update={
            "thresholds": {
                "accuracy": GateParams.model_validate(
                    {**RAW_RULES, "thresholds": {"accuracy": {"min": 0.9}}}
                ).thresholds["accuracy"]
            },
            "compare_metrics": ["roc_auc"],
            "baselines": ["majority"],
        }
    )
    assert set(failed(judge(rules, evidence()))) == {"thresholds", "compare_metrics", "baselines"}


def test_missing_evidence_fails_its_rule() -> None:
    report = judge(RULES, evidence(checks=None, parity=None))
    assert set(failed(report)) == {"recipe_checks", "export_parity"}


def test_a_failed_recipe_check_or_a_parity_report_for_another_file_fails() -> None:
    checks = copy.deepcopy(CHECKS)
    checks[1]["passed"] = False
    assert failed(judge(RULES, evidence(checks=checks))) == ["recipe_checks"]
    assert failed(judge(RULES, evidence(onnx_sha256="def"))) == ["export_parity"]


def test_skipped_checks_pass_but_are_named_in_the_report() -> None:
    checks = copy.deepcopy(CHECKS)
    checks[2].update(passed=True, skipped=True)
    report = judge(RULES, evidence(checks=checks))
    assert report.passed
    assert any("input_independent_baseline" in note for note in report.notes)


def comparison(change: float, low: float, high: float, rows: int = 500) -> Comparison:
    return Comparison(rows, rows, 1.0 + change, 1.0, change, low, high, 0.9)


def test_a_candidate_clearly_worse_than_the_champion_on_one_slice_is_rejected() -> None:
    report = judge(
        RULES,
        evidence(
            champion="0123456789abcdef",
            champion_comparisons={
                "overall": comparison(0.01, -0.01, 0.03),
                "c=a": comparison(0.11, 0.06, 0.16),  # 11% worse, and surely above the 2% tolerance
                "c=b": comparison(0.0, -0.02, 0.02),
            },
        ),
    )
    assert failed(report) == ["champion:c=a"]
    assert report.champion == "0123456789abcdef"
    rule = report.failures[0]
    assert rule.value == 0.11 and "+11% error" in rule.detail and "2%" in rule.threshold


def test_a_slice_worse_only_within_its_sampling_noise_passes() -> None:
    report = judge(
        RULES,
        evidence(
            champion="0123456789abcdef",
            champion_comparisons={
                "overall": comparison(0.01, -0.01, 0.03),
                "c=a": comparison(0.05, -0.04, 0.14, rows=40),  # 5% worse on 40 rows: could be noise
            },
        ),
    )
    assert report.passed, report.summary()


def test_slices_are_judged_as_one_family_so_noise_on_many_slices_fails_none() -> None:
    schema = toy_data().schema
    rng = np.random.default_rng(1)
    rows = 4000
    frame = pd.DataFrame({"g": rng.integers(0, 20, rows).astype(str), "y": rng.normal(10, 3, rows)})
    champion = frame["y"].to_numpy() + rng.normal(0, 1, rows)
    candidate = frame["y"].to_numpy() + rng.normal(0, 1, rows)  # equally good: any difference is noise
    candidate[frame["g"] == "7"] += 1.5  # clearly worse on one slice
    out = paired_comparisons(candidate, champion, frame, schema, ["g"], 30, 0.9)
    assert out["overall"].confidence == 0.9
    assert [c.confidence for k, c in out.items() if k != "overall"] == pytest.approx([1 - 0.1 / 20] * 20)
    report = judge(RULES, evidence(champion="0123456789abcdef", champion_comparisons=out))
    assert [r for r in failed(report) if r != "champion:overall"] == ["champion:g=7"]
    assert "99.5% confidence" in report.failures[-1].threshold


def test_a_champion_that_cannot_be_scored_fails_closed() -> None:
    assert failed(judge(RULES, evidence(champion="0123456789abcdef"))) == ["champion"]


def test_a_candidate_trained_on_shuffled_labels_is_rejected() -> None:
    data = toy_data(shuffle_labels=True)
    model = trained_model_for(data, epochs=5)
    test = data.frames["test"]
    baselines = {
        name: b.predict(test, data.schema) for name, b in fit_baselines(data.frames["train"], data.schema, 0).items()
    }
    result = evaluate(predict(model, test, data.schema), baselines, test, data.schema, EvaluateParams())
    report = judge(
        RULES,
        evidence(
            metrics=result.metrics["model"],
            slices=result.slices,
            baselines={k: v for k, v in result.metrics.items() if k != "model"},
        ),
    )
    assert not report.passed
    assert "threshold:r2" in failed(report)
    assert {"beats:mean:mae", "beats:mean:rmse"} <= set(failed(report))
