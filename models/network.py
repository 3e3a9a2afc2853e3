"""A tabular network that takes raw feature values and holds its own preprocessing.

Numeric inputs are imputed with the training mean (plus a was-missing indicator) and standardised with
the training statistics; categorical inputs go through the training vocabulary to embeddings, where
index 0 is the slot for missing and unseen values. For regression the target can be modelled as
standardised log1p(y), inverted inside `forward`. All statistics are buffers, so they travel with the
weights and into the exported ONNX graph.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from loopline.schema import FeatureSchema, Task


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the module before loading its state dict."""

    task: str
    n_numeric: int
    vocab_sizes: list[int]  # embedding rows per categorical feature, slot 0 included
    category_count: list[int]  # categories listed in the schema per categorical feature
    embedding_dims: list[int]
    hidden: list[int]
    dropout: float
    n_outputs: int
    target_transform: str = "none"  # none | standardize | log1p
    numeric_names: list[str] = field(default_factory=list)
    categorical_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_spec(
    schema: FeatureSchema,
    stats: dict[str, Any],
    hidden: list[int],
    dropout: float,
    embedding_dim: int | None,
    target_transform: str,
) -> NetworkSpec:
    vocab_sizes, dims = [], []
    for col in schema.categorical_features:
        seen = len(stats["categorical"][col.name]["vocabulary"])
        vocab_sizes.append(seen + 1)
        dims.append(embedding_dim or min(16, max(2, math.ceil(1.6 * (seen + 1) ** 0.56))))
    n_outputs = 1 if schema.task.value in ("regression", "binary") else len(schema.classes)
    return NetworkSpec(
        task=schema.task.value,
        n_numeric=len(schema.numeric_features),
        vocab_sizes=vocab_sizes,
        category_count=[len(c.categories) for c in schema.categorical_features],
        embedding_dims=dims,
        hidden=list(hidden),
        dropout=dropout,
        n_outputs=n_outputs,
        target_transform=target_transform if schema.task is Task.REGRESSION else "none",
        numeric_names=[c.name for c in schema.numeric_features],
        categorical_names=[c.name for c in schema.categorical_features],
    )


class TabularNet(nn.Module):
    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        n_num = spec.n_numeric
        self.register_buffer("num_mean", torch.zeros(n_num))
        self.register_buffer("num_std", torch.ones(n_num))
        # Per categorical feature: schema category position -> embedding row (0 = missing or unseen).
        max_categories = max(spec.category_count, default=1)
        self.register_buffer(
            "category_to_row", torch.zeros(len(spec.vocab_sizes), max_categories + 1, dtype=torch.long)
        )
        self.register_buffer("target_shift", torch.zeros(()))
        self.register_buffer("target_scale", torch.ones(()))
        self.embeddings = nn.ModuleList(nn.Embedding(v, d) for v, d in zip(spec.vocab_sizes, spec.embedding_dims))

        width = 2 * n_num + sum(spec.embedding_dims)
        layers: list[nn.Module] = []
        for h in spec.hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU(), nn.Dropout(spec.dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, spec.n_outputs)
        self.zero_inputs = False  # the input-independent baseline check switches this on

    # ------------------------------------------------------------------ preprocessing held as buffers
    def fit_preprocessing(self, schema: FeatureSchema, stats: dict[str, Any]) -> None:
        with torch.no_grad():
            for j, col in enumerate(schema.numeric_features):
                s = stats["numeric"][col.name]
                self.num_mean[j] = s["mean"]
                self.num_std[j] = s["std"] if s["std"] > 1e-12 else 1.0
            for j, col in enumerate(schema.categorical_features):
                vocabulary = stats["categorical"][col.name]["vocabulary"]
                row_of = {value: i + 1 for i, value in enumerate(vocabulary)}
                for position, value in enumerate(col.categories):
                    self.category_to_row[j, position] = row_of.get(value, 0)
            if self.spec.task == Task.REGRESSION:
                t = stats["target"]
                if self.spec.target_transform == "log1p":
                    self.target_shift.fill_(t["log1p_mean"])
                    self.target_scale.fill_(max(t["log1p_std"], 1e-12))
                else:
                    self.target_shift.fill_(t["mean"])
                    self.target_scale.fill_(max(t["std"], 1e-12))

    def init_output_bias(self, stats: dict[str, Any]) -> None:
        """Start at the prior: the target mean (0 after standardising) or the class log-prior."""
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            if self.spec.task == Task.REGRESSION:
                self.head.bias.zero_()
            else:
                prior = torch.tensor(stats["target"]["prior"], dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
                if self.spec.task == Task.BINARY:
                    self.head.bias.fill_(float(torch.log(prior[1] / prior[0])))
                else:
                    self.head.bias.copy_(torch.log(prior).float())

    # ----------------------------------------------------------------------------------- the network
    def encode(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Raw values to the network's input vector: standardised numerics, missing flags, embeddings."""
        missing = torch.isnan(numeric)
        filled = torch.where(missing, self.num_mean.expand_as(numeric), numeric)
        parts = [(filled - self.num_mean) / self.num_std, missing.to(filled.dtype)]
        positions = torch.where(categorical < 0, self.category_to_row.shape[1] - 1, categorical)
        for j, embedding in enumerate(self.embeddings):
            rows = self.category_to_row[j][positions[:, j]]
            parts.append(embedding(rows))
        z = torch.cat(parts, dim=1)
        return torch.zeros_like(z) if self.zero_inputs else z

    def from_encoded(self, z: torch.Tensor) -> torch.Tensor:
        out = self.head(self.body(z))
        return out.squeeze(-1) if self.spec.n_outputs == 1 else out

    def logits(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """What the loss sees: standardised (transformed) target for regression, logits otherwise."""
        return self.from_encoded(self.encode(numeric, categorical))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Predictions on the target's own scale: values, P(class 1), or class probabilities."""
        out = self.logits(numeric, categorical)
        if self.spec.task == Task.REGRESSION:
            y = out * self.target_scale + self.target_shift
            return torch.expm1(y) if self.spec.target_transform == "log1p" else y
        if self.spec.task == Task.BINARY:
            return torch.sigmoid(out)
        return torch.softmax(out, dim=-1)

    def transform_target(self, y: torch.Tensor) -> torch.Tensor:
        """Regression targets to the scale `logits` predicts."""
        if self.spec.target_transform == "log1p":
            y = torch.log1p(y.clamp_min(0))
        return (y - self.target_shift) / self.target_scale

    def loss(self, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's mean loss; with `weight`, the weighted mean (rows count by their weight)."""
        reduction = "mean" if weight is None else "none"
        if self.spec.task == Task.REGRESSION:
            loss = nn.functional.mse_loss(logits.float(), self.transform_target(y), reduction=reduction)
        elif self.spec.task == Task.BINARY:
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction=reduction)
        else:
            loss = nn.functional.cross_entropy(logits.float(), y, reduction=reduction)
        if weight is None:
            return loss
        weight = weight.float()
        return (loss.reshape(len(weight), -1).mean(dim=1) * weight).sum() / weight.sum()


def choose_target_transform(requested: str, task: str, stats: dict[str, Any]) -> str:
    """'auto': log1p for a non-negative, right-skewed regression target (counts), else standardize."""
    if task != Task.REGRESSION:
        return "none"
    if requested != "auto":
        return requested
    t = stats["target"]
    return "log1p" if t["min"] >= 0 and t["skew"] > 1.0 else "standardize"


class EnsembleNet(nn.Module):
    """Several trained networks over the same inputs; the prediction is their mean on the target's scale
    (values, or probabilities for classification). Exported whole, it is one ONNX graph."""

    def __init__(self, specs: list[NetworkSpec]) -> None:
        super().__init__()
        if len(specs) < 2:
            raise ValueError("an ensemble needs at least two members")
        tasks = {s.task for s in specs}
        if len(tasks) != 1:
            raise ValueError(f"ensemble members disagree on the task: {sorted(tasks)}")
        self.members = nn.ModuleList(TabularNet(s) for s in specs)

    @property
    def spec(self) -> NetworkSpec:
        return self.members[0].spec

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(numeric, categorical) for m in self.members]).mean(dim=0)
