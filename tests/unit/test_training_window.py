"""The training window: the last N days, recency weights in the loss, and each row's record."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dataprep.prepare import prepare
from loopline.config import Params
from loopline.errors import ConfigError
from loopline.paths import SPLITS
from loopline.schema import schema_from_dict
from models.train import PreparedSplits, split_weights
from toy import model_for, toy_data

SCHEMA = schema_from_dict(
    {
        "name": "daily",
        "task": "regression",
        "target": "y",
        "time_column": "t",
        "columns": {"t": {"kind": "datetime"}, "x": {"kind": "numeric"}, "y": {"kind": "numeric"}},
    }
)


def raw(days: int = 100) -> pd.DataFrame:
    t = pd.date_range("2024-01-01", periods=days, freq="D")
    return pd.DataFrame(
        {
            "t": t.strftime("%Y-%m-%d"),
            "x": np.arange(days, dtype=float),
            "y": np.arange(days, dtype=float),
            "_source_file": "data/external/daily.csv",
            "_source_row": np.arange(1, days + 1),
        }
    )


def test_all_history_by_default_and_equal_weights() -> None:
    result = prepare(raw(), SCHEMA, Params())
    assert sum(len(s) for s in result.splits.values()) == 100 and result.report["rows"]["outside_window"] == 0
    assert (result.rows["weight"] == 1.0).all()


def test_last_days_keeps_the_rows_of_the_last_n_days_before_the_newest() -> None:
    result = prepare(raw(), SCHEMA, Params(prepare={"window": {"last_days": 29}}))
    kept = pd.concat(result.splits.values())
    assert kept["t"].min() == pd.Timestamp("2024-03-11") and len(kept) == 30
    assert result.report["rows"]["outside_window"] == 70


def test_a_half_life_weights_every_split_row_by_its_age() -> None:
    result = prepare(raw(), SCHEMA, Params(prepare={"window": {"half_life_days": 10}}))
    rows = result.rows
    newest = pd.concat(result.splits.values())["t"].max()
    for name, frame in result.splits.items():
        weights = rows.loc[rows["split"] == name, "weight"].to_numpy()
        assert weights == pytest.approx(0.5 ** ((newest - frame["t"]).dt.days.to_numpy() / 10))
    assert rows["weight"].max() == 1.0  # the newest row, in the test split
    # the record follows the split's row order, with each row's provenance
    train = result.splits["train"]
    assert rows.loc[rows["split"] == "train", "_source_row"].tolist() == (train["x"] + 1).astype(int).tolist()


def test_the_selection_run_weighs_its_training_rows_and_a_refit_every_row_it_learns() -> None:
    result = prepare(raw(), SCHEMA, Params(prepare={"window": {"half_life_days": 10}}))
    data = PreparedSplits(result.schema, result.stats, result.splits, split_weights(result.rows))
    weights = {name: result.rows.loc[result.rows["split"] == name, "weight"].to_numpy() for name in SPLITS}
    assert data.batch("train").weight.numpy() == pytest.approx(weights["train"])
    assert data.batch("val").weight is None  # early stopping judges every validation row alike
    refit = data.refit_batch(("train", "val", "test")).weight.numpy()
    assert refit == pytest.approx(np.concatenate([weights[name] for name in SPLITS]), rel=1e-6)
    assert refit[-1] == pytest.approx(1.0)  # the newest row weighs most
    unweighted = prepare(raw(), SCHEMA, Params())
    assert split_weights(unweighted.rows) is None


def test_a_window_needs_a_datetime_time_column() -> None:
    numeric_time = schema_from_dict(
        {**SCHEMA.to_dict(), "columns": {**SCHEMA.to_dict()["columns"], "t": {"kind": "numeric"}}}
    )
    frame = raw().assign(t=np.arange(100))
    with pytest.raises(ConfigError, match="prepare.window needs a datetime time_column"):
        prepare(frame, numeric_time, Params(prepare={"window": {"last_days": 10}}))


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
@torch.no_grad()
def test_the_weighted_loss_is_the_weighted_mean_and_equal_weights_change_nothing(task: str) -> None:
    data = toy_data(task, rows=200)
    model = model_for(data).eval()  # no dropout: the same rows give the same logits
    batch = data.batch("train")
    logits = model.logits(batch.numeric, batch.categorical)
    plain = model.loss(logits, batch.target)
    assert float(model.loss(logits, batch.target, torch.ones(len(batch)))) == pytest.approx(float(plain), rel=1e-5)
    only_first = torch.zeros(len(batch))
    only_first[0] = 3.0
    first = batch.take(torch.tensor([0]))
    expected = model.loss(model.logits(first.numeric, first.categorical), first.target)
    assert float(model.loss(logits, batch.target, only_first)) == pytest.approx(float(expected), rel=1e-4)
