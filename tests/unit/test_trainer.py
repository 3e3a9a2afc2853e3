"""The training loop's settings do what params.yaml says they do."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loopline.config import TrainParams
from models.torch_predict import predict
from models.trainer import (
    Batch,
    TrainingDiverged,
    evaluate_loss,
    make_optimizer,
    make_scheduler,
    resolve_device,
    resolve_precision,
    train_model,
)
from toy import model_for, toy_data

CPU = torch.device("cpu")


def learning_rates(schedule: str, steps: int = 200, lr: float = 0.01, optimizer: str = "adamw") -> list[float]:
    params = TrainParams(schedule=schedule, optimizer=optimizer, warmup_fraction=0.1)
    opt = make_optimizer(torch.nn.Linear(2, 1), params, lr)
    scheduler = make_scheduler(opt, params, lr, steps)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return rates


def test_constant_schedule_keeps_the_rate() -> None:
    assert set(learning_rates("constant")) == {0.01}


def test_warmup_cosine_rises_linearly_then_decays_to_zero() -> None:
    rates = learning_rates("warmup_cosine")
    warmup = rates[:20]
    assert warmup == sorted(warmup) and warmup[0] == pytest.approx(0.01 / 20)
    assert max(rates) == pytest.approx(0.01) and rates.index(max(rates)) == 19
    assert rates[20:] == sorted(rates[20:], reverse=True)
    assert rates[-1] < 0.01 * 1e-3


def test_one_cycle_starts_low_peaks_at_the_rate_and_ends_far_below_it() -> None:
    rates = learning_rates("one_cycle")
    assert rates[0] == pytest.approx(0.01 / 25)
    assert max(rates) == pytest.approx(0.01, rel=1e-3)
    assert rates[-1] < 0.01 / 1000


def test_cyclic_goes_up_and_down_between_a_tenth_of_the_rate_and_the_rate() -> None:
    rates = learning_rates("cyclic", optimizer="sgd")
    assert min(rates) == pytest.approx(0.001) and max(rates) == pytest.approx(0.01, rel=0.01)
    turns = sum(1 for a, b, c in zip(rates, rates[1:], rates[2:]) if (b - a) * (c - b) < 0)
    assert turns >= 3


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("schedule", ["constant", "warmup_cosine", "one_cycle", "cyclic"])
def test_every_optimiser_and_schedule_trains_the_model(optimizer: str, schedule: str) -> None:
    data = toy_data()
    model = model_for(data)
    train, val = data.batch("train"), data.batch("val")
    before = evaluate_loss(model, val, CPU, "fp32")
    lr = 3e-3 if optimizer == "adamw" else 3e-2
    params = TrainParams(epochs=4, optimizer=optimizer, schedule=schedule, batch_size=64)
    result = train_model(model, train, val, params, seed=0, lr=lr, device=CPU)
    assert result.best_val_loss < 0.5 * before
    assert result.steps == 4 * math.ceil(len(train) / 64)


def test_early_stopping_stops_after_patience_and_restores_the_best_weights() -> None:
    data = toy_data()
    model = model_for(data)
    train = data.batch("train")
    # Validation rows whose target runs against the training signal: the better the model fits the
    # training data, the worse its validation loss, so the best epoch comes early.
    contrary = Batch(train.numeric, train.categorical, -train.target)
    params = TrainParams(epochs=30, patience=3, batch_size=64)
    result = train_model(model, train, contrary, params, seed=0, lr=3e-3, device=CPU)
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 1 + params.patience < params.epochs
    assert evaluate_loss(model, contrary, CPU, "fp32") == result.best_val_loss


def test_a_diverging_run_stops_with_a_message_that_says_what_to_change() -> None:
    data = toy_data()
    train, val = data.batch("train"), data.batch("val")
    params = TrainParams(epochs=3, optimizer="sgd", momentum=0.9, schedule="constant", grad_clip_norm=None)
    with pytest.raises(TrainingDiverged, match=r"diverged\. Lower train\.lr"):
        train_model(model_for(data), train, val, params, seed=0, lr=1e6, device=CPU)


def test_gradient_clipping_bounds_the_update_size() -> None:
    data = toy_data()
    train, val = data.batch("train"), data.batch("val")

    def first_step_change(clip: float | None) -> float:
        model = model_for(data)
        start = [p.detach().clone() for p in model.parameters()]
        params = TrainParams(
            epochs=1,
            optimizer="sgd",
            momentum=0.0,
            weight_decay=0.0,
            schedule="constant",
            grad_clip_norm=clip,
            batch_size=len(train),
        )
        train_model(model, train, val, params, seed=0, lr=1.0, device=CPU)
        return float(torch.sqrt(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start))))

    # One full-batch SGD step at lr 1 moves the weights by exactly the (clipped) gradient norm.
    assert first_step_change(0.01) == pytest.approx(0.01, rel=1e-3)
    assert first_step_change(None) > 0.05


def test_multiclass_head_trains_and_predicts_class_probabilities() -> None:
    data = toy_data("multiclass")
    model = model_for(data)
    train_model(
        model, data.batch("train"), data.batch("val"), TrainParams(epochs=5, batch_size=64), seed=0, lr=3e-3, device=CPU
    )
    model.eval()
    proba = predict(model, data.frames["test"], data.schema)
    assert proba.shape == (len(data.frames["test"]), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    labels = np.array(["low", "mid", "high"])[proba.argmax(axis=1)]
    assert (labels == data.frames["test"]["y"].to_numpy()).mean() > 0.8


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_forcing_cuda_without_a_gpu_is_a_clear_error_and_auto_means_cpu_in_fp32() -> None:
    with pytest.raises(RuntimeError, match="train.device is 'cuda' but no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU
    assert resolve_precision("auto", CPU) == resolve_precision("bf16", CPU) == "fp32"
