"""PyTorch's side of prediction: load a trained model from its directory and predict on raw rows (ONNX
Runtime's side, for the exported file, is loopline/runtime.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from loopline.features import encode_features
from loopline.paths import MODEL_FILES
from loopline.schema import FeatureSchema, load_schema
from models.network import EnsembleNet, NetworkSpec, TabularNet


def load_model(model_dir: Path, weights: str = "weights") -> tuple[TabularNet | EnsembleNet, FeatureSchema]:
    """The model in `model_dir`: one network, or an ensemble when spec.json lists its members' specs.
    `weights="holdout"`: the holdout network (train.refit: all), the one the test split judges."""
    spec = json.loads((model_dir / MODEL_FILES["spec"]).read_text())
    schema_file = model_dir / MODEL_FILES["schema"]
    schema = load_schema(schema_file)
    model: TabularNet | EnsembleNet
    if "ensemble" in spec:
        model = EnsembleNet([NetworkSpec(**member) for member in spec["ensemble"]])
    else:
        model = TabularNet(NetworkSpec(**spec))
    model.load_state_dict(torch.load(model_dir / MODEL_FILES[weights], map_location="cpu", weights_only=True))
    return model.eval(), schema


@torch.no_grad()
def predict(
    model: TabularNet | EnsembleNet, frame: pd.DataFrame, schema: FeatureSchema, chunk: int = 65536
) -> np.ndarray:
    """Predictions on the target's scale: values, P(class 1) for binary, class probabilities otherwise."""
    enc = encode_features(frame, schema)
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(enc), chunk):
        numeric = torch.from_numpy(enc.numeric[start : start + chunk])
        categorical = torch.from_numpy(enc.categorical[start : start + chunk])
        parts.append(model(numeric, categorical).float().numpy())
    model.train(was_training)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)
