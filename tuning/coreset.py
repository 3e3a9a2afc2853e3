"""Coresets: a small weighted sample of a split on which training gives nearly the full data's solution.

A coreset here is an importance sample: row i of a stratum of n rows is drawn with probability q_i in
each of m independent draws and weighs 1 / (m q_i) (Horvitz-Thompson: for any per-row quantity f,
E[sum w f] = sum f); draws of the same row add their weights. The weights of each stratum are then
scaled to sum to its n rows, so every class's and time block's row count is exact and a sum of f is
estimated as a ratio (consistent, its bias of order 1/m, far below the sampling error). A weighted loss
over the coreset thus estimates the full split's loss, and its gradient the full gradient.

- `sensitivity` (Bachem, Lucic and Krause, "Scalable k-means clustering via lightweight coresets", KDD
  2018): q_i = 1/(2n) + d_i^2 / (2 sum d^2), d_i the row's distance to its stratum's mean in the space the
  network sees (standardised numeric features, one-hot categories, and the standardised target for
  regression). Rows far from the mean (rare combinations, extreme targets) are kept more often and weigh
  less; the uniform half bounds a draw's weight by 2n/m.
- `uniform`: m rows without replacement, each weighing n/m (the comparison).

Strata: the class for classification, and for time-split data `time_blocks` blocks of time with equal row
counts, crossed; each stratum gets a share of the sample proportional to its rows, and at least one row,
so the rare class and the newest period are always present. A stratum no larger than its share is kept
whole at weight 1. Deterministic under the seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopline.config import CoresetParams, Params
from loopline.errors import ConfigError
from loopline.features import encode_features, encode_target
from loopline.schema import FeatureSchema
from models.train import PreparedSplits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coreset:
    rows: np.ndarray
    """Positions of the kept rows in the split, ascending (so time order is kept)."""
    weights: np.ndarray
    """Each kept row's weight: the number of split rows it stands for (float64)."""
    strata: int
    """How many strata the sample was drawn from."""

    def __len__(self) -> int:
        return len(self.rows)


def coreset_size(size: float, rows: int, what: str = "the training split") -> int:
    """A fraction (below 1) or a count of rows as a count, checked against the split's rows."""
    wanted = int(round(size * rows)) if size < 1 else int(size)
    if wanted > rows:
        raise ConfigError(f"coreset size {size:g} is {wanted} rows, more than the {rows} rows of {what}")
    return max(wanted, 1)


def time_blocks(times: pd.Series, blocks: int) -> np.ndarray:
    """Each row's block of time: `blocks` blocks of (nearly) equal row counts, oldest first."""
    order = np.argsort(pd.to_numeric(times, errors="coerce").to_numpy(), kind="stable")
    block = np.empty(len(times), dtype=np.int64)
    block[order] = np.arange(len(times)) * blocks // max(len(times), 1)
    return block


def allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Rows per stratum: proportional to its rows (largest remainders), at least one, at most all."""
    if total < len(sizes):
        raise ConfigError(
            f"coreset size {total} cannot hold every stratum: {len(sizes)} strata (classes x time blocks) "
            "need at least one row each; raise the size or lower time_blocks"
        )
    share = sizes / sizes.sum() * (total - len(sizes))
    out = np.floor(share).astype(np.int64) + 1
    remainder = share - np.floor(share)
    for i in np.argsort(-remainder, kind="stable")[: total - int(out.sum())]:
        out[i] += 1
    return np.minimum(out, sizes)


def sample_points(frame: pd.DataFrame, schema: FeatureSchema) -> np.ndarray:
    """The rows as the network sees them, for distances: numeric features standardised, categories
    one-hot (a differing category counts one), the target standardised for regression."""
    enc = encode_features(frame, schema)
    numeric = enc.numeric.astype(np.float64)
    numeric = np.where(np.isnan(numeric), np.nanmean(numeric, axis=0), numeric) if numeric.size else numeric
    std = numeric.std(axis=0) if len(numeric) else np.ones(numeric.shape[1])
    parts = [(numeric - numeric.mean(axis=0)) / np.where(std > 0, std, 1.0)]
    for j in range(enc.categorical.shape[1]):
        codes = enc.categorical[:, j]
        _, inverse = np.unique(codes, return_inverse=True)
        parts.append(np.eye(inverse.max() + 1)[inverse] / np.sqrt(2.0))
    if schema.task.value == "regression":
        y = np.asarray(encode_target(frame, schema), dtype=np.float64).reshape(len(frame), -1)
        parts.append((y - y.mean(axis=0)) / np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0))
    return np.hstack(parts) if parts else np.zeros((len(frame), 0))


def strata_of(frame: pd.DataFrame, schema: FeatureSchema, blocks: int, time_split: bool) -> np.ndarray:
    """Each row's stratum: its class (classification) crossed with its block of time (time-split data)."""
    keys = np.zeros(len(frame), dtype=np.int64)
    if schema.task.value != "regression":
        _, keys = np.unique(np.asarray(encode_target(frame, schema)), return_inverse=True)
    if time_split and schema.time_column is not None and blocks > 1:
        keys = keys * blocks + time_blocks(frame[schema.time_column], blocks)
    _, keys = np.unique(keys, return_inverse=True)
    return keys


def build_coreset(points: np.ndarray, strata: np.ndarray, size: int, method: str, seed: int) -> Coreset:
    """A coreset of `size` rows of `points` (one row per data row), drawn per stratum."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(strata, return_counts=True)
    quota = allocate(counts, size)
    rows, weights = [], []
    for label, n, m in zip(labels, counts, quota):
        members = np.flatnonzero(strata == label)
        if m >= n:
            rows.append(members)
            weights.append(np.ones(n))
            continue
        if method == "uniform":
            chosen = np.sort(rng.choice(n, size=m, replace=False))
            rows.append(members[chosen])
            weights.append(np.full(m, n / m))
            continue
        x = points[members]
        with np.errstate(over="ignore", invalid="ignore"):
            distance = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
            spread = distance.sum()
            q = 0.5 / n + (0.5 * distance / spread if spread > 0 else 0.5 / n)
        if not np.all(np.isfinite(q)):  # finite q >= 1/(2n) bounds every weight by 2n: only this can overflow
            raise ConfigError(
                f"coreset weights overflow: the squared distances of stratum {label}'s rows to their mean "
                "are not finite (a feature of enormous magnitude?), so no sampling probability exists"
            )
        draws = rng.choice(n, size=m, replace=True, p=q / q.sum())
        unique, times = np.unique(draws, return_counts=True)
        weight = times / (m * q[unique])
        rows.append(members[unique])
        weights.append(weight * (n / weight.sum()))  # the stratum's rows counted exactly
    kept = np.concatenate(rows)
    weight = np.concatenate(weights)
    order = np.argsort(kept, kind="stable")
    return Coreset(kept[order], weight[order], len(labels))


def split_coreset(
    frame: pd.DataFrame, schema: FeatureSchema, params: CoresetParams, seed: int, time_split: bool, what: str
) -> Coreset:
    """The coreset of one split under `params`."""
    size = coreset_size(params.size, len(frame), what)
    strata = strata_of(frame, schema, params.time_blocks, time_split)
    points = sample_points(frame, schema) if params.method == "sensitivity" else np.zeros((len(frame), 0))
    return build_coreset(points, strata, size, params.method, seed)


def coreset_splits(data: PreparedSplits, params: Params, coreset: CoresetParams | None) -> PreparedSplits:
    """`data` with its training split (and, with coreset.validation, its validation split) replaced by
    coresets whose weights multiply the rows' recency weights; the test split stays whole. None: data
    as it is."""
    if coreset is None:
        return data
    time_split = params.prepare.split.method == "time"
    frames, weights = dict(data.frames), {}
    for offset, name in enumerate(("train", "val")):
        frame = data.frames[name]
        base = data.weights[name] if data.weights is not None else np.ones(len(frame))
        if name == "val" and not coreset.validation:
            frames[name], weights[name] = frame, base
            continue
        sample = split_coreset(frame, data.schema, coreset, params.seed + offset, time_split, f"the {name} split")
        frames[name] = frame.iloc[sample.rows].reset_index(drop=True)
        weights[name] = base[sample.rows] * sample.weights
        log.info(
            "coreset of the %s split: %d of %d rows (%s, %d strata), weights %.3g to %.3g",
            name,
            len(sample),
            len(frame),
            coreset.method,
            sample.strata,
            sample.weights.min(),
            sample.weights.max(),
        )
    test = data.frames["test"]
    weights["test"] = data.weights["test"] if data.weights is not None else np.ones(len(test))
    return PreparedSplits(
        data.schema,
        data.stats,
        frames,
        {k: v.astype(np.float32) for k, v in weights.items()},
        weigh_validation=coreset.validation,
    )
