"""Small synthetic datasets with a known signal, prepared the way the pipeline prepares real data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dataprep.prepare import prepare
from loopline.config import Params, TrainParams
from loopline.schema import schema_from_dict
from models.network import TabularNet
from models.train import PreparedSplits, build_model

_FEATURES = {
    "t": {"kind": "numeric"},
    "x": {"kind": "numeric"},
    "w": {"kind": "numeric", "nullable": True},
    "c": {"kind": "categorical", "categories": ["a", "b", "c", "d"]},
}
SCHEMAS = {
    "regression": {
        "name": "toy",
        "task": "regression",
        "target": "y",
        "time_column": "t",
        "columns": {**_FEATURES, "y": {"kind": "numeric"}},
    },
    "binary": {
        "name": "toy",
        "task": "binary",
        "target": "y",
        "time_column": "t",
        "columns": {**_FEATURES, "y": {"kind": "categorical", "categories": [0, 1]}},
    },
    "multiclass": {
        "name": "toy",
        "task": "multiclass",
        "target": "y",
        "time_column": "t",
        "columns": {**_FEATURES, "y": {"kind": "categorical", "categories": ["low", "mid", "high"]}},
    },
}


def toy_data(task: str = "regression", rows: int = 3000, shuffle_labels: bool = False) -> PreparedSplits:
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=rows), rng.normal(size=rows)
    c = rng.choice(list("abcd"), size=rows)
    signal = 2 * x - w + np.select([c == "a", c == "b"], [1.5, -1.0], 0.0)
    if task == "regression":
        y = signal + rng.normal(0, 0.3, size=rows)
    elif task == "binary":
        y = (signal + rng.logistic(size=rows) * 0.3 > 0).astype(int)
    else:
        y = np.select([signal < -0.7, signal < 0.7], ["low", "mid"], "high")
    frame = pd.DataFrame({"t": np.arange(rows), "x": x, "w": w, "c": c, "y": y})
    frame.loc[::17, "w"] = np.nan
    if shuffle_labels:
        frame["y"] = rng.permutation(frame["y"].to_numpy())
    frame["_source_file"], frame["_source_row"] = "toy.csv", np.arange(1, rows + 1)
    schema = schema_from_dict(SCHEMAS[task])
    result = prepare(frame, schema, Params())
    return PreparedSplits(schema, result.stats, result.splits)


def model_for(data: PreparedSplits, **overrides) -> TabularNet:
    return build_model(data, Params(train=TrainParams(**overrides)))


def trained_model_for(data: PreparedSplits, epochs: int) -> TabularNet:
    """A toy network trained briefly (batches of 64, lr 3e-3) on data's train split."""
    from models.trainer import train_model

    model = model_for(data)
    train_model(
        model,
        data.batch("train"),
        data.batch("val"),
        TrainParams(epochs=epochs, batch_size=64),
        seed=0,
        lr=3e-3,
        device=model.num_mean.device,
    )
    return model
