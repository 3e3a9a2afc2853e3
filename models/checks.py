"""Recipe checks that run before every real training and stop a run that would fail silently.

- loss_at_init: the untrained model's loss is the loss of predicting the prior (the target mean, or the
  class prior: -log(1/C) for C balanced classes);
- overfit_one_batch: the model can drive the loss on one small batch close to zero;
- input_independent_baseline: trained on real inputs it clearly beats the same model with inputs zeroed;
- gradients: finite, reaching every parameter, and each output's gradient flows only to its own row.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from loopline.config import ChecksParams, TrainParams
from loopline.errors import LooplineError
from loopline.schema import Task
from models.network import TabularNet
from models.trainer import Batch, epoch_batches, evaluate_loss, iterate_forever, make_optimizer

log = logging.getLogger(__name__)


class RecipeCheckError(LooplineError):
    """A recipe check failed: training would produce a model, only a wrong one."""

    def __init__(self, message: str, results: list["CheckResult"] | None = None) -> None:
        super().__init__(message)
        self.results = results or []

    def results_dicts(self) -> list[dict]:
        return [r.to_dict() for r in self.results]


@dataclass
class CheckResult:
    name: str
    passed: bool
    value: float | None
    expected: str
    detail: str
    skipped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.skipped:
            return f"[skipped] {self.name}: skipped by train.checks.skip"
        mark = "pass" if self.passed else "FAIL"
        return f"[{mark}] {self.name}: {self.detail}"


def expected_initial_loss(model: TabularNet, data: Batch) -> float:
    """The loss of always predicting the prior, on these rows."""
    with torch.no_grad():
        if model.spec.task == Task.REGRESSION:
            return float(model.transform_target(data.target).var(unbiased=False))
        counts = torch.bincount(data.target, minlength=max(2, model.spec.n_outputs)).double()
        prior = counts / counts.sum()
        prior = prior[prior > 0]
        return float(-(prior * prior.log()).sum())


def check_loss_at_init(model: TabularNet, data: Batch, limits: ChecksParams) -> CheckResult:
    rows = data.take(torch.arange(min(len(data), 8192)))
    loss = evaluate_loss(model, rows, torch.device("cpu"), "fp32")
    expected = expected_initial_loss(model, rows)
    gap = abs(loss - expected) / max(expected, 1e-12)
    passed = gap <= limits.init_loss_tolerance
    what = "predicting the target mean" if model.spec.task == Task.REGRESSION else "predicting the class prior"
    detail = f"loss {loss:.4f} at initialisation, expected {expected:.4f} ({what}); off by {gap:.0%}"
    if not passed:
        detail += (
            ". The output layer does not start at the prior: check the final bias initialisation and the output scale"
        )
    return CheckResult(
        "loss_at_init", passed, loss, f"within {limits.init_loss_tolerance:.0%} of {expected:.4f}", detail
    )


def distinct_rows(data: Batch, size: int) -> Batch:
    """The first `size` rows whose features differ from every earlier row's (duplicates with different
    labels cannot be fitted by any model)."""
    keys = torch.cat([torch.nan_to_num(data.numeric.double(), nan=-1e300), data.categorical.double()], dim=1)
    _, first = torch.unique(keys[: size * 50], dim=0, return_inverse=True)
    picked, seen = [], set()
    for i, key in enumerate(first.tolist()):
        if key not in seen:
            seen.add(key)
            picked.append(i)
        if len(picked) == size:
            break
    return data.take(torch.tensor(picked))


def check_overfit_one_batch(model: TabularNet, data: Batch, limits: ChecksParams) -> CheckResult:
    probe = copy.deepcopy(model)
    probe.eval()  # no dropout: the question is whether the model can fit, not how it regularises
    batch = distinct_rows(data, limits.overfit_batch_size)
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    first = last = math.nan
    steps = 0
    for steps in range(1, limits.overfit_steps + 1):
        loss = probe.loss(probe.logits(batch.numeric, batch.categorical), batch.target)
        last = loss.item()
        if steps == 1:
            first = last
        if last <= limits.overfit_target * first:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    passed = last <= limits.overfit_target * first
    detail = f"loss on one batch of {len(batch)} rows went from {first:.4f} to {last:.4f} in {steps} steps"
    if not passed:
        detail += (
            f", not below {limits.overfit_target:.0%} of the start. The model cannot memorise 16 rows: look for "
            "inputs that never reach the output, a frozen or clamped layer, or a learning rate of zero"
        )
    return CheckResult(
        "overfit_one_batch",
        passed,
        last,
        f"<= {limits.overfit_target * first:.4f} within {limits.overfit_steps} steps",
        detail,
    )


def _train_briefly(model: TabularNet, train: Batch, recipe: TrainParams, steps: int, seed: int) -> None:
    optimizer = make_optimizer(model, recipe, lr=1e-3)
    model.train()
    batches = iterate_forever(lambda epoch: epoch_batches(len(train), recipe.batch_size, seed, epoch))
    for _, index in zip(range(steps), batches):
        batch = train.take(index)
        loss = model.loss(model.logits(batch.numeric, batch.categorical), batch.target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def check_input_independent_baseline(
    model: TabularNet, train: Batch, val: Batch, recipe: TrainParams, seed: int
) -> CheckResult:
    limits = recipe.checks
    real, blind = copy.deepcopy(model), copy.deepcopy(model)
    blind.zero_inputs = True
    torch.manual_seed(seed)
    _train_briefly(real, train, recipe, limits.baseline_steps, seed)
    torch.manual_seed(seed)
    _train_briefly(blind, train, recipe, limits.baseline_steps, seed)
    rows = val.take(torch.arange(min(len(val), 16384)))
    real_loss = evaluate_loss(real, rows, torch.device("cpu"), "fp32")
    blind_loss = evaluate_loss(blind, rows, torch.device("cpu"), "fp32")
    limit = blind_loss * (1 - limits.baseline_margin)
    passed = real_loss <= limit
    detail = f"validation loss {real_loss:.4f} with real inputs vs {blind_loss:.4f} with inputs zeroed"
    if not passed:
        detail += (
            ". The model learns nothing from its features: check that targets belong to their rows (a shuffle or "
            "a join gone wrong), that the features carry signal, and that they reach the model"
        )
    return CheckResult(
        "input_independent_baseline",
        passed,
        real_loss,
        f"<= {limit:.4f} ({limits.baseline_margin:.0%} below zeroed)",
        detail,
    )


def check_gradients(model: TabularNet, data: Batch) -> CheckResult:
    probe = copy.deepcopy(model)
    batch = data.take(torch.arange(min(len(data), 64)))
    probe.train()
    probe.zero_grad()
    loss = probe.loss(probe.logits(batch.numeric, batch.categorical), batch.target)
    loss.backward()
    problems = []
    if not torch.isfinite(loss):
        problems.append(f"the loss is {float(loss)}")
    for name, p in probe.named_parameters():
        if p.grad is None or not bool(p.grad.abs().sum() > 0):
            problems.append(f"no gradient reaches {name}")
        elif not bool(torch.isfinite(p.grad).all()):
            problems.append(f"non-finite gradient in {name}")

    # Each row's output must depend on that row alone (catches a view() where a transpose was meant).
    probe.eval()
    z = probe.encode(batch.numeric, batch.categorical).detach().requires_grad_(True)
    out = probe.from_encoded(z)
    row = len(batch) // 2
    out[row].sum().backward()
    leaked = (z.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist()
    others = [i for i in leaked if i != row]
    if others:
        problems.append(
            f"the output of row {row} has gradient from {len(others)} other rows (e.g. {others[:3]}): "
            "samples are mixed inside the network, as a view() or reshape() in place of a transpose does"
        )
    if row not in leaked:
        problems.append(f"the output of row {row} does not depend on its own inputs")
    passed = not problems
    detail = "finite, reaching all parameters, rows independent" if passed else "; ".join(problems)
    return CheckResult("gradients", passed, float(len(problems)), "no problems", detail)


def run_recipe_checks(model: TabularNet, train: Batch, val: Batch, recipe: TrainParams, seed: int) -> list[CheckResult]:
    """Run every check (on CPU) not named in train.checks.skip; raise on the first set of failures."""
    checks: dict[str, Callable[[], CheckResult]] = {
        "loss_at_init": lambda: check_loss_at_init(model, train, recipe.checks),
        "overfit_one_batch": lambda: check_overfit_one_batch(model, train, recipe.checks),
        "input_independent_baseline": lambda: check_input_independent_baseline(model, train, val, recipe, seed),
        "gradients": lambda: check_gradients(model, train),
    }
    results = []
    for name, run in checks.items():
        if name in recipe.checks.skip:
            result = CheckResult(name, True, None, "", "skipped", skipped=True)
        else:
            result = run()
        log.info("recipe check %s", result.line())
        results.append(result)
    return results


def raise_on_failures(results: list[CheckResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n  ".join(r.line() for r in failed)
        raise RecipeCheckError(
            f"{len(failed)} recipe check(s) failed; the model was not trained:\n  {lines}\n"
            "A check can be skipped only by naming it in params.yaml train.checks.skip (recorded with the model).",
            results,
        )
