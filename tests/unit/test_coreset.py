"""Coresets: a small weighted sample whose weighted sums stand for the whole split's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from loopline.config import CoresetParams, Params
from loopline.errors import ConfigError
from loopline.features import encode_target
from models.train import fit
from toy import model_for, toy_data
from tuning.coreset import build_coreset, coreset_splits, split_coreset, strata_of, time_blocks

SENSITIVITY = CoresetParams(size=0.1, method="sensitivity", time_blocks=4)


def imbalanced_binary(rows: int = 4000) -> tuple:
    """A binary split with a 3% class, time-ordered."""
    data = toy_data("binary", rows=rows)
    train = data.frames["train"]
    rare = train[train["y"] == 1].sample(int(0.03 * len(train)), random_state=0)
    frame = pd.concat([train[train["y"] == 0], rare]).sort_values("t").reset_index(drop=True)
    return data, frame


@pytest.mark.parametrize("method", ["sensitivity", "uniform"])
def test_weighted_sums_over_the_coreset_estimate_the_splits_sums(method: str) -> None:
    data = toy_data("regression", rows=6000)
    frame = data.frames["train"]
    y = encode_target(frame, data.schema)
    params = CoresetParams(size=0.1, method=method, time_blocks=4)
    sample = split_coreset(frame, data.schema, params, seed=0, time_split=True, what="train")
    assert len(sample) <= round(0.1 * len(frame))
    # the weights count the rows they stand for: the total, and each time block's rows (exactly)
    assert sample.weights.sum() == pytest.approx(len(frame))
    blocks = time_blocks(frame["t"], 4)
    for block in range(4):
        mine = sample.weights[blocks[sample.rows] == block].sum()
        assert mine == pytest.approx((blocks == block).sum())
    # the target's mean, and the sum of its squares (a loss-like positive sum)
    y = y.astype(np.float64)
    mean = (sample.weights * y[sample.rows]).sum() / sample.weights.sum()
    assert abs(mean - y.mean()) < 0.1 * y.std()
    assert (sample.weights * y[sample.rows] ** 2).sum() == pytest.approx((y**2).sum(), rel=0.1)


def test_the_estimates_centre_on_the_full_sums_over_seeds() -> None:
    data = toy_data("regression", rows=4000)
    frame = data.frames["train"]
    y = encode_target(frame, data.schema)
    totals, sums = [], []
    for seed in range(200):
        sample = split_coreset(frame, data.schema, SENSITIVITY, seed=seed, time_split=True, what="train")
        totals.append(sample.weights.sum())
        sums.append((sample.weights * y[sample.rows].astype(np.float64) ** 2).sum())
    assert np.allclose(totals, len(frame))
    assert np.mean(sums) == pytest.approx(float((y.astype(np.float64) ** 2).sum()), rel=0.02)


def test_every_class_and_time_block_is_kept_and_the_class_counts_are_estimated() -> None:
    data, frame = imbalanced_binary()
    params = CoresetParams(size=0.05, method="sensitivity", time_blocks=4)
    strata = strata_of(frame, data.schema, 4, time_split=True)
    sample = split_coreset(frame, data.schema, params, seed=3, time_split=True, what="train")
    assert set(strata[sample.rows]) == set(strata)  # each class x block
    y = np.asarray(encode_target(frame, data.schema))
    for cls in (0, 1):
        assert sample.weights[y[sample.rows] == cls].sum() == pytest.approx((y == cls).sum())


def test_the_same_seed_gives_the_same_coreset_and_another_seed_another() -> None:
    data = toy_data("multiclass", rows=3000)
    frame = data.frames["train"]
    first = split_coreset(frame, data.schema, SENSITIVITY, seed=7, time_split=True, what="train")
    again = split_coreset(frame, data.schema, SENSITIVITY, seed=7, time_split=True, what="train")
    other = split_coreset(frame, data.schema, SENSITIVITY, seed=8, time_split=True, what="train")
    assert np.array_equal(first.rows, again.rows) and np.array_equal(first.weights, again.weights)
    assert not np.array_equal(first.rows, other.rows)
    assert np.all(np.diff(first.rows) > 0)  # in the split's (time) order


def test_sensitivity_keeps_rows_far_from_the_mean_more_often_at_smaller_weights() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(5000, 2))
    points[:50] *= 20  # a few extreme rows
    sample = build_coreset(points, np.zeros(5000, dtype=int), 250, "sensitivity", seed=0)
    extreme = sample.rows < 50
    assert extreme.sum() > 250 * 50 / 5000 * 3  # far more than their share of a uniform sample
    assert sample.weights[extreme].mean() < sample.weights[~extreme].mean()


def test_a_weighted_training_step_equals_the_full_data_step_in_expectation() -> None:
    data = toy_data("regression", rows=3000)
    model = model_for(data).eval()  # no dropout: the same rows give the same gradient

    def gradient(batch) -> torch.Tensor:
        """The gradient of the loss the trainer steps on: the batch's (weighted) mean loss."""
        model.zero_grad()
        model.loss(model.logits(batch.numeric, batch.categorical), batch.target, batch.weight).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()

    full = gradient(data.batch("train"))
    draws = [
        gradient(coreset_splits(data, Params(seed=seed), CoresetParams(size=0.1, validation=False)).batch("train"))
        for seed in range(150)
    ]
    mean = torch.stack(draws).mean(dim=0)
    assert torch.linalg.vector_norm(mean - full) < 0.05 * torch.linalg.vector_norm(full)
    assert torch.linalg.vector_norm(mean - full) < torch.linalg.vector_norm(draws[0] - full) / 3


def test_coreset_splits_sample_train_and_val_keep_test_whole_and_training_runs_with_them() -> None:
    data = toy_data("binary", rows=3000)
    small = coreset_splits(data, Params(), CoresetParams(size=0.2))
    assert len(small.frames["train"]) <= round(0.2 * len(data.frames["train"]))
    assert len(small.frames["val"]) <= round(0.2 * len(data.frames["val"]))
    assert small.frames["test"].equals(data.frames["test"])
    assert small.batch("val").weight is not None  # early stopping on the weighted validation loss
    fitted = fit(small, Params(train={"epochs": 3}), run_checks=True, find_lr=False)
    assert np.isfinite(fitted.result.best_val_loss) and all(c.passed for c in fitted.checks)
    assert coreset_splits(data, Params(), None) is data


def test_sizes_that_cannot_work_are_named() -> None:
    data, frame = imbalanced_binary()
    with pytest.raises(ConfigError, match=r"more than the \d+ rows of the train split"):
        split_coreset(frame, data.schema, CoresetParams(size=10**6), seed=0, time_split=True, what="the train split")
    with pytest.raises(ConfigError, match="cannot hold every stratum: 16 strata"):
        split_coreset(frame, data.schema, CoresetParams(size=10, time_blocks=8), 0, True, "the train split")
    with pytest.raises(ValueError, match="a fraction below 1 or a whole number of rows"):
        CoresetParams(size=2.5)
    with pytest.raises(ValueError, match="coreset and cross_validate together"):
        Params(tune={"coreset": {"size": 0.1}, "cross_validate": True})


def test_weights_that_overflow_are_refused() -> None:
    points = np.zeros((10, 1))
    points[0] = 1e200  # its squared distance overflows: no probability can be computed
    with pytest.raises(ConfigError, match="coreset weights overflow"):
        build_coreset(points, np.zeros(10, dtype=int), 3, "sensitivity", seed=0)
