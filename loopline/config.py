"""params.yaml, read into typed settings. Every knob of the pipeline lives there, grouped by stage."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loopline.errors import ConfigError
from loopline.metrics import ALL_METRICS
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, load_schema

BUILTIN_SOURCES = ("bike", "acs", "penguins")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
    source: str = "bike"
    """'bike', 'acs' or 'penguins' (bundled datasets), or 'file' for a CSV or Parquet file of your own."""
    path: str | None = None
    """With source 'file': the file, relative to the project root (keep it under data/external)."""
    schema_file: str | None = Field(default=None, alias="schema")
    """The schema to validate against; defaults to schemas/<source>.yaml."""
    as_of: str | int | None = None
    """Cut-off on the time column: only rows at or before it are known. A date alone means the whole day."""

    @model_validator(mode="after")
    def _file_source_needs_path_and_schema(self) -> "DataParams":
        if self.source == "file":
            if not self.path:
                raise ValueError("source 'file' needs data.path (a CSV or Parquet file)")
            if not self.schema_file:
                raise ValueError("source 'file' needs data.schema (a schema YAML for that file)")
        elif self.source not in BUILTIN_SOURCES:
            raise ValueError(f"data.source must be one of {BUILTIN_SOURCES + ('file',)}, got {self.source!r}")
        return self


class SplitParams(_Section):
    method: Literal["time", "group", "random"] = "time"
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _leaves_rows_for_training(self) -> "SplitParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% of the rows for training")
        return self


class WindowParams(_Section):
    """Which history a model learns from, measured back from the newest known row on the time column."""

    last_days: float | None = Field(default=None, gt=0)
    """Keep only rows of the last N days before the newest row (all splits); null: all history."""
    half_life_days: float | None = Field(default=None, gt=0)
    """Weight each training row by 0.5 ** (its age in days / half_life_days) in the loss; null: equal weights."""


class PrepareParams(_Section):
    split: SplitParams = SplitParams()
    max_invalid_share: float = Field(default=0.05, ge=0, le=1)
    """Stop the stage when more than this share of rows is invalid (they are quarantined either way)."""
    window: WindowParams = WindowParams()


class HarvestParams(_Section):
    """`loopline harvest`: served records whose labels arrived become a labelled batch for `ingest`."""

    unknown_label_grace_minutes: float = Field(default=10.0, ge=0)
    """A label naming a record the request log does not hold waits this long (the log may not be written
    yet) before it is quarantined."""
    retention_days: float | None = Field(default=90.0, gt=0)
    """After a harvest, request-log and label files older than this are removed; null keeps them all."""


class RetrainParams(_Section):
    """How an automated retraining (the training flow) is recorded in git."""

    record: Literal["branch", "experiment", "off"] = "branch"
    """branch: run in a clean git worktree of the project's HEAD on `branch`, and commit the params it
    changed, dvc.lock and the harvested batches' .dvc files there (a person's uncommitted edits are never
    part of it); experiment: the same worktree, each run saved as a DVC experiment (`dvc exp show`)
    instead of a commit on the branch; off: run in the project directory as it is (also when the project
    is not a git repo)."""
    branch: str = "loopline/retrain"
    """The branch that holds the automated retrainings' commits."""


RECIPE_CHECKS = ("loss_at_init", "overfit_one_batch", "input_independent_baseline", "gradients")


class ModelParams(_Section):
    hidden: list[int] = Field(default=[128, 128], min_length=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    embedding_dim: int | None = Field(default=None, ge=1)
    """None: sized from each vocabulary."""
    target_transform: Literal["auto", "none", "standardize", "log1p"] = "auto"


class LRRangeParams(_Section):
    min_lr: float = Field(default=1e-7, gt=0)
    max_lr: float = Field(default=1.0, gt=0)
    steps: int = Field(default=100, ge=10)


class ChecksParams(_Section):
    skip: list[str] = []
    """Recipe checks to skip, by name; each skip is recorded with the model."""
    init_loss_tolerance: float = Field(default=0.25, gt=0)
    overfit_batch_size: int = Field(default=16, ge=2)
    overfit_steps: int = Field(default=500, ge=10)
    overfit_target: float = Field(default=0.05, gt=0)
    """The one-batch loss must fall below this fraction of its initial value."""
    baseline_steps: int = Field(default=300, ge=10)
    baseline_margin: float = Field(default=0.05, ge=0)
    """Real inputs must reach a validation loss at least this fraction below zeroed inputs'."""

    @model_validator(mode="after")
    def _known_checks(self) -> "ChecksParams":
        unknown = sorted(set(self.skip) - set(RECIPE_CHECKS))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown} in train.checks.skip; the checks are {list(RECIPE_CHECKS)}")
        return self


class CoresetParams(_Section):
    """A small weighted sample that stands for a split (tuning/coreset.py): weighted sums over it estimate
    the split's sums without bias, so a weighted loss on it estimates the full split's loss."""

    size: float = Field(gt=0)
    """Rows of the training split to keep: a fraction of it (below 1) or a count of rows (1 or more)."""
    method: Literal["sensitivity", "uniform"] = "sensitivity"
    """sensitivity: importance sampling by a lightweight-coreset sensitivity (half uniform, half by the
    squared distance to the stratum's mean, Bachem, Lucic and Krause 2018); uniform: a stratified
    uniform sample (the comparison)."""
    time_blocks: int = Field(default=8, ge=1)
    """Time-split data is also stratified by this many blocks of time with equal row counts, so that
    every period (the newest included) is kept in its share."""
    validation: bool = True
    """Sample the validation split the same way (same share), with its loss weighted, so that early
    stopping costs a fraction too; false: validate on the whole split."""

    @model_validator(mode="after")
    def _whole_rows(self) -> "CoresetParams":
        if self.size >= 1 and self.size != int(self.size):
            raise ValueError(f"size {self.size}: a fraction below 1 or a whole number of rows")
        return self


class TrainParams(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 autocast on a CUDA device that supports it, else fp16 with a grad scaler; fp32 on CPU."""
    epochs: int = Field(default=40, ge=1)
    batch_size: int = Field(default=256, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | Literal["auto"] = 3e-4
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=1e-4, ge=0)
    schedule: Literal["constant", "warmup_cosine", "one_cycle", "cyclic"] = "warmup_cosine"
    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    grad_clip_norm: float | None = Field(default=1.0, gt=0)
    patience: int = Field(default=6, ge=1)
    refit: Literal["off", "train_val", "all"] = "all"
    """After selection (early stopping on the validation split), train a fresh network for the selected
    number of epochs on more rows, so the served model learns the newest ones. all: train + val + test;
    the test split is then judged by the selection run's network (the recipe evaluated at one origin of
    a rolling evaluation, kept as holdout.pt), and the served one proves itself on live traffic.
    train_val: train + val; the test split judges the served network itself. off: serve the selection
    run's network."""
    coreset: CoresetParams | None = None
    """A fast retrain: the selection run learns a coreset of the training split (and validates on one),
    the refit learns the coresets and the whole test split; null (default): every row."""
    checkpoint_every_steps: int = Field(default=200, ge=1)
    deterministic: bool = True
    model: ModelParams = ModelParams()
    lr_range: LRRangeParams = LRRangeParams()
    checks: ChecksParams = ChecksParams()


class EvaluateParams(_Section):
    slices: Literal["auto"] | list[str] = "auto"
    """Columns whose values define the slices metrics are reported (and gated) on; auto: every
    categorical feature with at most max_slice_categories categories."""
    max_slice_categories: int = Field(default=12, ge=2)
    min_slice_rows: int = Field(default=30, ge=1)
    """Smaller slices are reported but not judged by the gate."""


class ExportParams(_Section):
    """Parity between PyTorch and ONNX Runtime on the golden batch, numpy.allclose style: every
    prediction must satisfy |torch - onnx| <= parity_atol + parity_rtol * |torch|, or the export fails."""

    parity_atol: float = Field(default=1e-4, gt=0)
    parity_rtol: float = Field(default=1e-5, ge=0)
    """Float32 carries about 7 significant digits: at a predicted count of 500 one unit in the last place
    is 6e-5, so values on a large scale need a relative bound; probabilities are held to parity_atol."""


class DriftParams(_Section):
    """Evidently's data-drift test per column, and the share of drifted columns that makes a drift.
    Methods are Evidently stat-test names (ks, chisquare, wasserstein, jensenshannon, psi, ...); unset:
    Evidently's choice by column type and reference size."""

    num_method: str | None = None
    cat_method: str | None = None
    threshold: float | None = Field(default=None, gt=0)
    per_column_method: dict[str, str] = {}
    per_column_threshold: dict[str, float] = {}
    share: float = Field(default=0.5, gt=0, le=1)
    """A window drifts when at least this share of the checked columns (features and the prediction) drift."""


class AlertParams(_Section):
    recipients: list[str] = Field(default=["ml-oncall@localhost"], min_length=1)
    sender: str = "loopline@localhost"
    remind_hours: float = Field(default=168.0, ge=0)
    """An open incident alerts again when it gets worse (a higher severity, another column); unchanged, it
    reminds after this long."""
    retry_seconds: list[float] = Field(default=[1, 5, 30], min_length=1)
    """Waits between SMTP attempts in one delivery run; what is still unsent stays in the outbox."""


class InputParams(_Section):
    """The input contract (monitoring.decide.input_problems): breaches are an incident of their own."""

    max_refused_share: float = Field(default=0.05, ge=0, le=1)
    """More of the window's requests than this answered 400 (invalid input): the columns named most."""
    max_missing_share: float = Field(default=0.2, ge=0, le=1)
    """A column whose value more records than this came without."""


class RecalibrateParams(_Section):
    """A level correction of production (regression): when the labelled window's true values sit above or
    below production's predictions by a steady factor (the world's level moved: prices, demand, a new
    counting method), production with its output shifted by that factor becomes a challenger in shadow;
    it is promoted only when it beats production on the next labelled window, like any candidate. It
    answers a level shift within a week, while a retraining needs weeks of shifted labels to move."""

    enabled: bool = True
    min_change: float = Field(default=0.1, gt=0, lt=1)
    """The smallest level change acted on: true values this fraction above or below the predictions (a
    factor on 1 + y for a log1p target; a share of the target's standard deviation for a standardised one)."""
    confidence: float = Field(default=0.9, gt=0.5, lt=1)
    """The interval of the change, from day-blocked residual means, must exclude no change."""


class MonitorParams(_Section):
    window_hours: float = Field(default=168.0, gt=0)
    """A scheduled check reads the request log of the last this many hours."""
    min_rows: int = Field(default=100, ge=1)
    """Fewer served records in a window: "insufficient data", no verdict."""
    min_labelled_rows: int = Field(default=50, ge=1)
    """Fewer labelled records: performance is judged from the label-free estimate instead."""
    confidence: float = Field(default=0.9, gt=0.5, lt=1)
    """Harm is declared only when the bootstrap interval of the error's increase, at this confidence,
    lies wholly above a severity bound."""
    severities: list[float] = Field(default=[0.2, 0.5, 1.0], min_length=1)
    """Error increases over the model's normal error (its test split) that make it degraded, badly
    degraded, failing."""
    retrain: bool = True
    """Harm starts the training flow (the new candidate proves itself in shadow, see promote:)."""
    refresh_days: float | None = Field(default=7.0, gt=0)
    """Also train a candidate, without alerting, when no challenger is in shadow and labelled rows this
    many days newer than production's training data have been harvested; null: only on harm."""
    inputs: InputParams = InputParams()
    drift: DriftParams = DriftParams()
    alerts: AlertParams = AlertParams()
    recalibrate: RecalibrateParams = RecalibrateParams()

    @field_validator("severities")
    @classmethod
    def _increasing(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values) or values != sorted(set(values)):
            raise ValueError(f"severities must be positive and increasing, got {values}")
        return values


class LiveParams(_Section):
    """Promotion on live evidence (monitoring.decide): champion/challenger in shadow, and rollback."""

    live: bool = True
    """A candidate that passes the gate is scored in shadow on live traffic and promoted when it beats
    production there; false: promoted on the gate alone (the first model always is)."""
    confidence: float = Field(default=0.9, gt=0.5, lt=1)
    min_rows: int = Field(default=100, ge=1)
    """Labelled live rows scored by both models before a decision."""
    min_gain: float = Field(default=0.0, ge=0, lt=1)
    """Promote when the challenger's error is below production's by more than this fraction, with confidence."""
    max_windows: int = Field(default=3, ge=1)
    """A challenger neither better nor worse after this many checks is retired."""
    rollback: bool = True
    """The replaced model stays in shadow after a promotion; if the promoted one is worse than it on the
    same live rows with confidence, production goes back."""
    watch_windows: int = Field(default=1, ge=1)
    """Checks the replaced model is watched for."""
    escalate_after: int = Field(default=2, ge=1)
    """Degraded while this many candidates in a row failed: the email says so and what to do."""


class SearchDimension(_Section):
    """One tuned parameter: a range (low/high, optionally log scale, integer or stepped) or a list of
    choices; `when` makes it conditional on other parameters' values (e.g. momentum only for sgd);
    `grid` lists a range's values for the grid sampler."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    int_: bool = Field(default=False, alias="int")
    step: float | None = Field(default=None, gt=0)
    choices: list[Any] | None = Field(default=None, min_length=1)
    grid: list[Any] | None = Field(default=None, min_length=1)
    when: dict[str, Any] = {}

    @model_validator(mode="after")
    def _range_or_choices(self) -> "SearchDimension":
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (a range) or choices (a list)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a log scale cannot have a step")
        return self


class CrossValidationParams(_Section):
    method: Literal["kfold", "rolling"] = "rolling"
    """kfold: k folds of the training and validation rows (by group when the split is by group; refused
    for time-split data, which would train on the future); rolling: rolling-origin folds in time order,
    each trained on everything before its validation block."""
    folds: int = Field(default=5, ge=2)


class EnsembleParams(_Section):
    top_k: int = Field(default=1, ge=1)
    """Above 1: `train` trains the best top_k trials' settings and averages their predictions inside one
    model (and one ONNX graph)."""


class TuneParams(_Section):
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "successive_halving", "none"] = "median"
    n_trials: int | None = Field(default=20, ge=1)
    """Trials per `tune` run, over all workers; null: until timeout_minutes."""
    timeout_minutes: float | None = Field(default=None, gt=0)
    """No new trial starts after this long; null: no time limit."""
    storage: str | None = None
    """A database URL shared by every worker (e.g. postgresql+psycopg://user@host/db); null: the SQLite
    file .state/tune/study.db. $LOOPLINE_TUNE_STORAGE overrides it."""
    study: str | None = None
    """null: named after the data source and a fingerprint of the data, space and settings, so a change
    of any of them starts a new study and an unchanged one continues."""
    epochs: int | None = Field(default=None, ge=1)
    """Epochs per trial; null: train.epochs. Early stopping applies as in training."""
    startup_trials: int = Field(default=5, ge=0)
    """Trials the pruner lets finish before it compares, and TPE samples at random before modelling."""
    warmup_epochs: int = Field(default=2, ge=0)
    """Epochs of each trial the median pruner never prunes."""
    start_from_current: bool = True
    """Trial 0 of a new study tries params.yaml's own values, so the search is compared with them."""
    space: dict[str, SearchDimension] = {}
    """Dotted train.* keys to search, e.g. train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}."""
    cross_validate: bool = False
    """Score each trial by the mean validation loss over the `cv:` folds instead of the one val split."""
    coreset: CoresetParams | None = None
    """Trials learn a coreset of the training split (and validate on one); the winner is trained on the
    full data by `train`, so the gate judges a full-data model. null: trials learn every row."""
    ensemble: EnsembleParams = EnsembleParams()

    @model_validator(mode="after")
    def _space_keys_are_training_settings(self) -> "TuneParams":
        if self.coreset is not None and self.cross_validate:
            raise ValueError(
                "coreset and cross_validate together: the folds are cut from the whole training and "
                "validation rows; choose one"
            )
        for key, dim in self.space.items():
            if not key.startswith("train."):
                raise ValueError(f"space key {key!r}: only train.* settings can be tuned")
            for other in dim.when:
                if other not in self.space:
                    raise ValueError(f"space key {key!r}: condition on {other!r}, which is not in the space")
        return self


class ThresholdLimits(_Section):
    min: float | None = None
    max: float | None = None


class GateParams(_Section):
    """The gate's rules (release.gate judges them). Margins and tolerances have no defaults: a rule the
    gate applies is always one a person wrote down, never a silent zero."""

    thresholds: dict[str, ThresholdLimits] = {}
    """Absolute limits on the whole test split, by metric; metrics the task lacks are not applied."""
    baselines: list[Literal["mean", "majority", "linear"]] = []
    """The candidate must beat each of these (those evaluated for the task) ..."""
    baseline_margin: float = Field(ge=0, lt=1)
    """... cutting its error by at least this fraction on every compare metric."""
    compare_metrics: list[str] = []
    """Metrics compared against the baselines and the production model."""
    champion_tolerance: float = Field(ge=0)
    """The candidate's error may exceed production's by at most this fraction, overall and per judged
    slice ..."""
    champion_confidence: float = Field(gt=0.5, lt=1)
    """... which fails only when the paired bootstrap interval at this confidence is wholly above it."""

    @field_validator("thresholds", "compare_metrics")
    @classmethod
    def _known_metrics(cls, names: Any) -> Any:
        for name in names:
            if name not in ALL_METRICS:
                raise ValueError(
                    f"unknown metric {name!r}{_closest(name, ALL_METRICS)}; the metrics are {list(ALL_METRICS)}"
                )
        return names


def _closest(name: str, valid: Any) -> str:
    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 42
    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    monitor: MonitorParams = MonitorParams()
    promote: LiveParams = LiveParams()
    tune: TuneParams = TuneParams()
    cv: CrossValidationParams = CrossValidationParams()
    harvest: HarvestParams = HarvestParams()
    retrain: RetrainParams = RetrainParams()
    gate: GateParams | None = None
    """The gate's rules. Deliberately without defaults: a missing or empty section fails the gate closed."""

    @field_validator("gate", mode="before")
    @classmethod
    def _empty_gate_is_no_gate(cls, raw: Any) -> Any:
        return None if raw == {} else raw


def _section_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The setting names valid at `loc` below `model` (dict keys and list indexes stepped over)."""
    annotation: Any = model
    for part in loc:
        candidates = [annotation, *typing.get_args(annotation)]
        section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if section is not None:
            field = next((f for n, f in section.model_fields.items() if part in (n, f.alias)), None)
            if field is None:
                return []
            annotation = field.annotation
        else:  # dict[str, X] or list[X]: the part is a key or an index
            args = [a for c in candidates for a in typing.get_args(c)]
            annotation = args[-1] if args else None
    candidates = [annotation, *typing.get_args(annotation)]
    section = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return [f.alias or n for n, f in section.model_fields.items()] if section is not None else []


def validation_problems(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """pydantic's errors as one line: each setting's dotted key and what is wrong with it. An unknown key
    is named with the closest valid one."""
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and model is not None:
            valid = _section_fields(model, tuple(err["loc"][:-1]))
            message = f"unknown setting{_closest(err['loc'][-1], valid)}; valid here: {valid}"
        problems.append(f"{key}: {message}")
    return "; ".join(problems)


def load_params(path: str | Path | None = None) -> Params:
    path = Path(path) if path is not None else ProjectPaths.here().params
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc, Params)}") from None


def locate(tree: dict[str, Any], dotted: str, source: str, create: bool = False) -> tuple[dict[str, Any], str]:
    """The section of a nested mapping that holds a dotted key's last part, and that part:
    locate(params, "train.model.hidden") -> (params["train"]["model"], "hidden"). With `create`, missing
    sections are added; otherwise a part that is not a section is a ConfigError naming `source`."""
    *parents, key = dotted.split(".")
    node = tree
    for name in parents:
        if create and node.get(name) is None:
            node[name] = {}
        if not isinstance(node.get(name), dict):
            raise ConfigError(f"{source}: {dotted!r} names no setting ({name!r} is not a section)")
        node = node[name]
    return node, key


def with_overrides(params: Params, overrides: dict[str, Any], source: str = "overrides") -> Params:
    """params with dotted keys set ({"train.lr": 0.01, "train.model.hidden": [64]}), validated again;
    a key that names no setting or a value out of range is a ConfigError naming `source` and the key."""
    raw = params.model_dump(by_alias=True)
    for dotted, value in overrides.items():
        node, key = locate(raw, dotted, source)
        if key not in node:
            raise ConfigError(f"{source}: {dotted!r} names no setting")
        node[key] = value
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {validation_problems(exc, Params)}") from None


class TunedParams(BaseModel):
    """tuned.yaml: what the last search chose. `overrides` are dotted params.yaml keys for the best trial;
    `ensemble`, when it has entries, holds each member's overrides (best first); `study` says where from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    ensemble: list[dict[str, Any]] = []

    @property
    def empty(self) -> bool:
        return not self.overrides and not self.ensemble


def load_tuned(path: str | Path) -> TunedParams:
    """tuned.yaml, or nothing tuned when the file is missing or holds {}."""
    path = Path(path)
    if not path.is_file():
        return TunedParams()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return TunedParams.model_validate(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc)}") from None


def training_runs(params: Params, tuned: TunedParams, source: str = "tuned.yaml") -> list[Params]:
    """The settings of each network the train stage trains: params.yaml with the tuned overrides (one
    run), or one run per ensemble member."""
    if tuned.ensemble:
        return [with_overrides(params, member, f"{source} ensemble[{i}]") for i, member in enumerate(tuned.ensemble)]
    return [with_overrides(params, tuned.overrides, f"{source} overrides")]


def update_params_file(path: str | Path, changes: dict[str, Any]) -> None:
    """Set values in params.yaml by dotted key ({"data.as_of": "2011-06-30"}), keeping its comments and
    layout (a round trip through ruamel.yaml, as DVC edits params), written atomically."""
    import io
    import os

    from ruamel.yaml import YAML

    path = Path(path)
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096  # never re-wrap a long line (flow-style lists in tune.space)
    yaml_rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = yaml_rt.load(path.read_text()) or {}
    for dotted, value in changes.items():
        node, key = locate(document, dotted, str(path), create=True)
        node[key] = value
    out = io.StringIO()
    yaml_rt.dump(document, out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(out.getvalue())
    os.replace(tmp, path)


def schema_path(params: Params, paths: ProjectPaths) -> Path:
    name = params.data.schema_file or f"schemas/{params.data.source}.yaml"
    return paths.root / name


def load_dataset_schema(params: Params, paths: ProjectPaths) -> FeatureSchema:
    return load_schema(schema_path(params, paths))
