"""Each recipe check passes on the real model and fails on a model or data built to trip it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loopline.config import TrainParams
from models.checks import (
    RecipeCheckError,
    check_gradients,
    check_input_independent_baseline,
    check_loss_at_init,
    check_overfit_one_batch,
    raise_on_failures,
    run_recipe_checks,
)
from models.lr_finder import lr_range_test, plot_lr_range
from models.network import TabularNet
from models.train import PreparedSplits
from models.trainer import train_model
from toy import model_for, toy_data


class ViewInsteadOfTranspose(TabularNet):
    """A classic bug: reshaping [batch, features] into [features, batch] and back mixes rows."""

    def from_encoded(self, z: torch.Tensor) -> torch.Tensor:
        return super().from_encoded(z.reshape(z.shape[1], z.shape[0]).t())


class IgnoresItsInputs(TabularNet):
    def from_encoded(self, z: torch.Tensor) -> torch.Tensor:
        return super().from_encoded(z * 0)


@pytest.fixture(scope="module")
def data() -> PreparedSplits:
    return toy_data()


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_every_check_passes_on_the_real_model(task: str) -> None:
    data = toy_data(task)
    model = model_for(data)
    results = run_recipe_checks(model, data.batch("train"), data.batch("val"), TrainParams(), seed=0)
    assert [r.name for r in results] == ["loss_at_init", "overfit_one_batch", "input_independent_baseline", "gradients"]
    assert all(r.passed for r in results), [r.line() for r in results]
    raise_on_failures(results)


def test_loss_at_init_is_the_loss_of_the_class_prior_for_balanced_classes() -> None:
    data = toy_data("binary")
    result = check_loss_at_init(model_for(data), data.batch("train"), TrainParams().checks)
    assert result.passed
    assert result.value == pytest.approx(math.log(2), rel=0.05)


def test_a_wrong_final_bias_trips_the_loss_at_init_check(data: PreparedSplits) -> None:
    model = model_for(data)
    with torch.no_grad():
        model.head.bias.fill_(4.0)
    result = check_loss_at_init(model, data.batch("train"), TrainParams().checks)
    assert not result.passed
    assert "final bias" in result.detail


def test_a_model_that_ignores_its_inputs_cannot_overfit_one_batch(data: PreparedSplits) -> None:
    model = IgnoresItsInputs(model_for(data).spec)
    model.load_state_dict(model_for(data).state_dict())
    result = check_overfit_one_batch(model, data.batch("train"), TrainParams().checks)
    assert not result.passed
    assert "cannot memorise" in result.detail
    assert check_overfit_one_batch(model_for(data), data.batch("train"), TrainParams().checks).passed


def test_shuffled_labels_trip_the_input_independent_baseline() -> None:
    shuffled = toy_data(shuffle_labels=True)
    result = check_input_independent_baseline(
        model_for(shuffled), shuffled.batch("train"), shuffled.batch("val"), TrainParams(), seed=0
    )
    assert not result.passed
    assert "learns nothing from its features" in result.detail


def test_a_view_instead_of_a_transpose_trips_the_gradient_check(data: PreparedSplits) -> None:
    real = model_for(data)
    buggy = ViewInsteadOfTranspose(real.spec)
    buggy.load_state_dict(real.state_dict())
    result = check_gradients(buggy, data.batch("train"))
    assert not result.passed
    assert "samples are mixed inside the network" in result.detail
    assert check_gradients(real, data.batch("train")).passed


def test_failed_checks_stop_training_unless_skipped_by_name(data: PreparedSplits) -> None:
    model = model_for(data)
    with torch.no_grad():
        model.head.bias.fill_(4.0)
    results = run_recipe_checks(model, data.batch("train"), data.batch("val"), TrainParams(), seed=0)
    with pytest.raises(RecipeCheckError, match="loss_at_init"):
        raise_on_failures(results)

    skipping = TrainParams(checks={"skip": ["loss_at_init"]})
    results = run_recipe_checks(model, data.batch("train"), data.batch("val"), skipping, seed=0)
    assert results[0].skipped and results[0].passed
    raise_on_failures(results)


def test_the_lr_range_test_suggests_a_rate_where_the_loss_falls_fastest_and_plots_its_curve(
    data: PreparedSplits, tmp_path
) -> None:
    result = lr_range_test(model_for(data), data.batch("train"), TrainParams(), seed=0)
    assert len(result.lrs) >= 20 and result.lrs == sorted(result.lrs)
    at = result.lrs.index(result.suggested_lr)
    lowest = int(np.argmin(result.smoothed))
    # Before the loss bottoms out (a rate that still learns), on a falling stretch of the curve, and the
    # steepest one: no other point between the noisy ends falls faster per decade of learning rate.
    assert at < lowest
    assert result.smoothed[at + 1] < result.smoothed[at - 1]
    slopes = np.gradient(np.asarray(result.smoothed), np.log10(result.lrs))
    assert slopes[at] == pytest.approx(slopes[3 : len(slopes) - 3].min())
    # And training from it works: 200 steps at the suggestion beat 200 steps at 1/100 of it.
    losses = {}
    for lr in (result.suggested_lr, result.suggested_lr / 100):
        model = model_for(data)
        trained = train_model(
            model,
            data.batch("train"),
            data.batch("val"),
            TrainParams(epochs=3, schedule="constant"),
            seed=0,
            lr=lr,
            device=model.num_mean.device,
        )
        losses[lr] = trained.best_val_loss
    assert losses[result.suggested_lr] < losses[result.suggested_lr / 100]
    plot_lr_range(result, tmp_path / "lr_range.png")
    assert (tmp_path / "lr_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_model_takes_raw_values_with_nulls_and_unseen_categories(data: PreparedSplits) -> None:
    model = model_for(data).eval()
    numeric = torch.tensor([[0.5, float("nan")]], dtype=torch.float32)
    categorical = torch.tensor([[-1]])  # missing or not a listed category
    out = model(numeric, categorical)
    assert out.shape == (1,) and torch.isfinite(out).all()


def test_lr_auto_trains_at_the_range_tests_suggestion(data: PreparedSplits) -> None:
    from loopline.config import Params
    from models.train import fit

    fitted = fit(data, Params(train=TrainParams(lr="auto", epochs=2)), run_checks=False, find_lr=False)
    assert fitted.lr_range is not None, "lr: auto must run the range test even when find_lr is off"
    assert fitted.lr == fitted.lr_range.suggested_lr and math.isfinite(fitted.lr)
    fixed = fit(data, Params(train=TrainParams(lr=1e-3, epochs=2)), run_checks=False, find_lr=False)
    assert fixed.lr_range is None and fixed.lr == 1e-3
