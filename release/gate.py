"""The evaluation gate: fail-closed rules that decide whether a candidate model may be served.

Every rule is judged and reported with its value, threshold and result; the verdict passes only when
every rule passes. Missing evidence fails its rule, and a missing or empty rule set fails the gate:
there is no "no verdict". Rules (params.yaml `gate:`):

- thresholds: absolute limits per metric on the test split (only the task's metrics apply; a rule set
  in which none applies fails);
- baselines: the candidate cuts each named baseline's error by `baseline_margin` on each metric of
  `compare_metrics` that the task has;
- champion: on the same test rows, the candidate's error is not above the production model's by more
  than `champion_tolerance` with `champion_confidence` (a paired bootstrap over the rows, so a slice's
  sampling noise is no reason to reject), overall and on every slice large enough to judge (the slices
  as one family: each at the Bonferroni confidence, release.promote.paired_comparisons). The first
  model has no champion, and the report says so. Promotion over a champion is decided on live traffic
  (monitoring.decide, `promote:`); this rule keeps a candidate clearly worse somewhere out of shadow.

"Error" is the metric itself for errors and losses (MAE, RMSE, log loss) and 1 - score for scores
bounded by 1 (accuracy, F1, ROC-AUC, R2), so a 5% margin asks as much of a 0.95 accuracy as of a 0.6 one;
- recipe checks: every training recipe check that ran passed (skips are listed);
- export parity: the ONNX file is the one the parity report was made for, and parity held.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from loopline.config import GateParams
from loopline.evidence import Comparison
from loopline.metrics import error_of, lower_is_better


@dataclass(frozen=True)
class Rule:
    name: str
    value: Any
    threshold: Any
    passed: bool
    detail: str = ""


@dataclass
class GateReport:
    passed: bool
    rules: list[Rule]
    champion: str | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "champion": self.champion,
            "notes": self.notes,
            "rules": [asdict(r) for r in self.rules],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "GateReport":
        return cls(
            bool(raw["passed"]),
            [Rule(**r) for r in raw.get("rules", [])],
            raw.get("champion"),
            list(raw.get("notes", [])),
        )

    @property
    def failures(self) -> list[Rule]:
        return [r for r in self.rules if not r.passed]

    def summary(self) -> str:
        head = f"gate {'PASSED' if self.passed else 'FAILED'}: {len(self.rules) - len(self.failures)} of {len(self.rules)} rules passed"
        lines = [head] + [
            f"  FAIL {r.name}: {r.value} vs {r.threshold}{' - ' + r.detail if r.detail else ''}" for r in self.failures
        ]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


@dataclass
class Evidence:
    """What the gate judges, gathered from the pipeline's outputs and the registry."""

    metrics: dict[str, float]
    """The candidate's metrics on the test split."""
    slices: dict[str, dict[str, dict[str, Any]]]
    baselines: dict[str, dict[str, float]]
    checks: list[dict[str, Any]] | None
    parity: dict[str, Any] | None
    onnx_sha256: str
    champion: str | None = None
    champion_metrics: dict[str, float] | None = None
    champion_slices: dict[str, dict[str, dict[str, Any]]] | None = None
    champion_rows: int | None = None
    """The candidate's test rows newer than anything the champion learned: those it is compared on."""
    champion_comparisons: dict[str, Comparison] | None = None
    """The candidate's per-row error against the champion's on the same test rows: "overall" and
    "<column>=<value>" for each judged slice."""


def _from_error(metric: str, error: float) -> float:
    return error if lower_is_better(metric) else 1.0 - error


def _better(metric: str, value: float, reference: float, margin: float) -> tuple[bool, float]:
    """(value cuts the reference's error by at least the margin, the value it had to reach)."""
    bound = _from_error(metric, error_of(metric, reference) * (1 - margin))
    return error_of(metric, value) <= error_of(metric, bound), bound


def _not_worse(metric: str, value: float, reference: float, tolerance: float) -> tuple[bool, float]:
    """(value's error exceeds the reference's by at most the tolerance, the value it had to reach)."""
    bound = _from_error(metric, error_of(metric, reference) * (1 + tolerance))
    return error_of(metric, value) <= error_of(metric, bound), bound


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def judge(rules: GateParams | None, ev: Evidence) -> GateReport:
    """Every rule family in turn; the verdict passes only when every rule passed."""
    if rules is None:
        missing = Rule(
            "rule_set",
            None,
            "a non-empty params.yaml gate section",
            False,
            "no gate rules: a missing or empty rule set fails closed",
        )
        return GateReport(False, [missing], ev.champion, [])
    notes: list[str] = []
    compare = [m for m in rules.compare_metrics if m in ev.metrics]
    out = [
        *threshold_rules(rules, ev),
        *baseline_rules(rules, ev, compare),
        *champion_rules(rules, ev, compare, notes),
        *recipe_check_rules(ev, notes),
        *parity_rules(ev),
    ]
    return GateReport(all(r.passed for r in out), out, ev.champion, notes)


def threshold_rules(rules: GateParams, ev: Evidence) -> list[Rule]:
    """Absolute limits on the test metrics; a rule set of which none applies to the task fails."""
    applicable = {m: lim for m, lim in rules.thresholds.items() if m in ev.metrics}
    if not applicable:
        return [
            Rule(
                "thresholds",
                sorted(rules.thresholds),
                f"limits on some of {sorted(ev.metrics)}",
                False,
                "no absolute threshold applies to this task's metrics",
            )
        ]
    out = []
    for metric, limits in applicable.items():
        value = ev.metrics[metric]
        for kind in ("min", "max"):
            bound = getattr(limits, kind)
            if bound is not None:
                ok = _finite(value) and (value >= bound if kind == "min" else value <= bound)
                out.append(Rule(f"threshold:{metric}", value, f"{'>=' if kind == 'min' else '<='} {bound}", ok))
    return out


def baseline_rules(rules: GateParams, ev: Evidence, compare: list[str]) -> list[Rule]:
    """The candidate cuts each named baseline's error by baseline_margin on every compare metric."""
    out = []
    if not compare:
        out.append(
            Rule(
                "compare_metrics",
                rules.compare_metrics,
                f"some of {sorted(ev.metrics)}",
                False,
                "no metric to compare against baselines and champion",
            )
        )
    wanted = [b for b in rules.baselines if b in ev.baselines]
    if not rules.baselines:
        out.append(Rule("baselines", None, "baselines to beat", False, "no baselines named in gate.baselines"))
    elif not wanted:
        out.append(
            Rule("baselines", rules.baselines, sorted(ev.baselines), False, "none of the named baselines was evaluated")
        )
    margin = rules.baseline_margin
    for name in wanted:
        for metric in compare:
            ok, bound = _better(metric, ev.metrics[metric], ev.baselines[name][metric], margin)
            out.append(
                Rule(
                    f"beats:{name}:{metric}",
                    ev.metrics[metric],
                    round(bound, 6),
                    ok and _finite(ev.metrics[metric]),
                    f"{name} {ev.baselines[name][metric]:.6g}, margin {margin:g}",
                )
            )
    return out


def champion_rules(rules: GateParams, ev: Evidence, compare: list[str], notes: list[str]) -> list[Rule]:
    """Not worse than production by more than champion_tolerance with champion_confidence, overall and
    on every judged slice (paired comparisons on the same test rows)."""
    if ev.champion is None:
        notes.append("first model: there is no production model to compare with")
        return []
    if ev.champion_rows == 0:
        notes.append(
            f"no test row of the candidate can be judged for both it and production {ev.champion[:8]} by "
            "networks that did not learn it: they are compared on live traffic in shadow (promote:)"
        )
        return []
    if not ev.champion_comparisons:
        return [
            Rule(
                "champion",
                ev.champion,
                "comparable on the same test rows",
                False,
                "the production model could not be scored on the candidate's test rows",
            )
        ]
    tolerance = rules.champion_tolerance
    out = []
    for key, c in ev.champion_comparisons.items():
        out.append(
            Rule(
                f"champion:{key}",
                round(c.change, 4),
                f"not above +{tolerance:.0%} with {c.confidence:.1%} confidence",
                not c.above(tolerance),
                f"error against production {ev.champion[:8]}: {c.describe()}",
            )
        )
    return out


def recipe_check_rules(ev: Evidence, notes: list[str]) -> list[Rule]:
    """Every training recipe check that ran passed; skips are named in the notes."""
    if ev.checks is None:
        return [Rule("recipe_checks", None, "all run checks passed", False, "no recipe-check record")]
    failed = [c["name"] for c in ev.checks if not c.get("passed")]
    skipped = [c["name"] for c in ev.checks if c.get("skipped")]
    if skipped:
        notes.append(f"recipe checks skipped by params.yaml: {skipped}")
    return [Rule("recipe_checks", {"failed": failed, "skipped": skipped}, "none failed", not failed)]


def parity_rules(ev: Evidence) -> list[Rule]:
    """The export parity report belongs to this very ONNX file, and parity held."""
    if ev.parity is None:
        return [Rule("export_parity", None, "parity report", False, "no parity report")]
    same_file = ev.parity.get("onnx_sha256") == ev.onnx_sha256
    ok = bool(ev.parity.get("passed")) and same_file
    return [
        Rule(
            "export_parity",
            ev.parity.get("max_abs_diff"),
            f"<= {ev.parity.get('atol')} + {ev.parity.get('rtol')} x |y|",
            ok,
            "" if same_file else "the parity report was made for another ONNX file",
        )
    ]
