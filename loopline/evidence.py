"""How sure a decision is: bootstrap confidence for the comparisons the loop acts on.

Every decision of the loop compares mean per-row errors (absolute error for regression, 0/1 error for
classification; `row_errors`):

- `compare_paired`: two models on the same rows (a challenger's shadow predictions beside production's,
  a promoted model against the one it replaced); rows are resampled together, so what both models
  find hard cancels out.
- `compare_to_reference`: one model's error on a window against its normal error on other rows (its
  test split, its own earlier weeks); the two sides are resampled independently.

Rows served together are not independent (the same hour, the same client, the same day), so rows are
resampled in blocks: the caller's `blocks` (e.g. request ids) when given. Both return the relative change
of the mean error (challenger / incumbent - 1) with a two-sided `confidence` interval; a decision acts
only when the whole interval is on one side of its bound.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from loopline.features import class_probabilities

RESAMPLES = 2000


@dataclass(frozen=True)
class Comparison:
    rows: int
    blocks: int
    error: float
    """Mean per-row error of the model judged (the challenger, or the window)."""
    reference_error: float
    """Mean per-row error of what it is judged against (the incumbent, or the reference rows)."""
    change: float
    """error / reference_error - 1: -0.1 is 10% less error."""
    low: float
    high: float
    confidence: float

    def above(self, bound: float) -> bool:
        """The change exceeds `bound` with the stated confidence (its whole interval is above it)."""
        return self.low > bound

    def below(self, bound: float) -> bool:
        return self.high < bound

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        """'-12% error (90% interval -18% to -6%, 840 rows)'."""
        return (
            f"{self.change:+.0%} error ({self.confidence:.0%} interval {self.low:+.0%} to {self.high:+.0%}, "
            f"{self.rows} rows)"
        )


def row_errors(task: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-row error whose mean is the task's primary error: |y - pred| for regression, 1 where the
    predicted class is wrong for classification (pred: P(class 1), or one probability column per class)."""
    y = np.asarray(y)
    pred = np.asarray(pred, dtype=np.float64)
    if task == "regression":
        return np.abs(y.astype(np.float64) - pred)
    return (class_probabilities(pred).argmax(axis=1) != y.astype(np.int64)).astype(np.float64)


def _block_index(n: int, blocks: np.ndarray | None) -> list[np.ndarray]:
    if blocks is None:
        return [np.array([i]) for i in range(n)]
    _, inverse = np.unique(np.asarray(blocks).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    cuts = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, cuts)


def _block_sums(values: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([values[g].sum() for g in groups]), np.array([len(g) for g in groups], dtype=np.float64)


def _resampled_means(
    sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator, resamples: int
) -> tuple[np.ndarray, np.ndarray]:
    pick = rng.integers(0, len(counts), size=(resamples, len(counts)))
    return sums[pick].sum(axis=1), counts[pick].sum(axis=1)


def _interval(ratios: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(ratios, [tail, 1 - tail])
    return float(low) - 1, float(high) - 1


def compare_paired(
    errors: np.ndarray,
    reference_errors: np.ndarray,
    *,
    confidence: float = 0.9,
    blocks: np.ndarray | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Comparison:
    """Two models' per-row errors on the same rows (`errors`: the challenger's)."""
    errors, reference_errors = np.asarray(errors, np.float64), np.asarray(reference_errors, np.float64)
    if errors.shape != reference_errors.shape or errors.size == 0:
        raise ValueError(f"paired errors need the same non-empty rows: {errors.shape} and {reference_errors.shape}")
    groups = _block_index(len(errors), blocks)
    a, counts = _block_sums(errors, groups)
    b, _ = _block_sums(reference_errors, groups)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(groups), size=(resamples, len(groups)))
    ratios = a[pick].sum(axis=1) / np.maximum(b[pick].sum(axis=1), 1e-12)
    low, high = _interval(ratios, confidence)
    mean_a, mean_b = float(errors.mean()), float(reference_errors.mean())
    return Comparison(len(errors), len(groups), mean_a, mean_b, mean_a / max(mean_b, 1e-12) - 1, low, high, confidence)


def compare_to_reference(
    errors: np.ndarray,
    reference_errors: np.ndarray,
    *,
    confidence: float = 0.9,
    blocks: np.ndarray | None = None,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Comparison:
    """A window's per-row errors against reference rows' errors (other rows; resampled independently)."""
    errors, reference_errors = np.asarray(errors, np.float64), np.asarray(reference_errors, np.float64)
    if errors.size == 0 or reference_errors.size == 0:
        raise ValueError("a comparison needs errors on both sides")
    rng = np.random.default_rng(seed)
    groups = _block_index(len(errors), blocks)
    a_sums, a_counts = _resampled_means(*_block_sums(errors, groups), rng, resamples)
    b_sums, b_counts = _resampled_means(reference_errors, np.ones(len(reference_errors)), rng, resamples)
    ratios = (a_sums / a_counts) / np.maximum(b_sums / b_counts, 1e-12)
    low, high = _interval(ratios, confidence)
    mean_a, mean_b = float(errors.mean()), float(reference_errors.mean())
    return Comparison(len(errors), len(groups), mean_a, mean_b, mean_a / max(mean_b, 1e-12) - 1, low, high, confidence)
