"""Where every artifact lives. The one module that knows the layout of the project's data and reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loopline.settings import Settings

SPLITS = ("train", "val", "test")
MODEL_FILES = {
    "weights": "model.pt",
    "spec": "spec.json",
    "schema": "schema.json",
    "stats": "stats.json",
    "training": "training.json",
    "holdout": "holdout.pt",
}
"""The trained model's directory (artifacts/model): PyTorch weights, network spec, the frozen schema, the
preprocessing statistics and the training record; with train.refit: all, also the holdout network's
weights (the selection run, which never saw the test rows, and which the test split judges)."""
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "tuned.yaml",
    "schemas",
    "loopline",
    "dataprep",
    "models",
    "tuning",
    "release",
    "serving",
    "monitoring",
    "flows",
    "tools",
    "bentofile.yaml",
    "prefect.yaml",
    ".dvcignore",
    ".gitignore",
    "data/external",
)
"""What a copy of the project needs to run its pipeline, service and flows elsewhere (the demo's scratch
project, the tests' temporary ones): the map, the knobs, the schemas, the code and the user's sources."""

PREFECT_YAML = "prefect.yaml"
"""The Prefect deployments (flows/deployments.py reads it; `prefect deploy --all` registers it)."""


def project_root() -> Path:
    """The project root: $LOOPLINE_ROOT if set, else the working directory (DVC runs stages from there)."""
    return (Settings.from_env().root or Path.cwd()).resolve()


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def here(cls) -> "ProjectPaths":
        return cls(project_root())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def schemas_dir(self) -> Path:
        return self.root / "schemas"

    # --- data (DVC-managed) ---
    @property
    def external_dir(self) -> Path:
        """User-supplied source files (track them with `dvc add`)."""
        return self.root / "data" / "external"

    @property
    def batches_dir(self) -> Path:
        """New labeled batches (CSV or Parquet) appended to the source at ingest."""
        return self.external_dir / "batches"

    @property
    def raw_snapshot(self) -> Path:
        return self.root / "data" / "raw" / "snapshot.parquet"

    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    def split(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self.prepared_dir / f"{name}.parquet"

    @property
    def prepared_rows(self) -> Path:
        """Per row of each split (in split order): where it came from (file and row; for harvested rows the
        request, record, model version, served and label times) and its training weight."""
        return self.prepared_dir / "rows.parquet"

    @property
    def quarantine(self) -> Path:
        return self.prepared_dir / "quarantine.parquet"

    @property
    def preprocessing_stats(self) -> Path:
        return self.prepared_dir / "stats.json"

    @property
    def prepared_schema(self) -> Path:
        """The schema the prepared data was validated against, frozen beside it."""
        return self.prepared_dir / "schema.json"

    # --- reports ---
    @property
    def data_reports_dir(self) -> Path:
        return self.root / "reports" / "data"

    @property
    def data_metrics(self) -> Path:
        return self.data_reports_dir / "metrics.json"

    @property
    def data_report_json(self) -> Path:
        return self.data_reports_dir / "report.json"

    @property
    def data_report_html(self) -> Path:
        return self.data_reports_dir / "report.html"

    # --- training and models ---
    @property
    def baseline_metrics(self) -> Path:
        return self.root / "reports" / "baselines" / "metrics.json"

    @property
    def baseline_models(self) -> Path:
        return self.root / "artifacts" / "baselines.joblib"

    @property
    def model_dir(self) -> Path:
        """The trained model: weights, network spec, the schema and statistics it was trained with."""
        return self.root / "artifacts" / "model"

    @property
    def train_reports_dir(self) -> Path:
        return self.root / "reports" / "train"

    @property
    def train_metrics(self) -> Path:
        return self.train_reports_dir / "metrics.json"

    @property
    def recipe_checks(self) -> Path:
        return self.train_reports_dir / "checks.json"

    @property
    def failed_checks(self) -> Path:
        """The recipe-check report of the last run that failed its checks (the model was not replaced)."""
        return self.state_dir / "train" / "failed-checks.json"

    @property
    def dvclive_dir(self) -> Path:
        return self.root / "dvclive"

    @property
    def checkpoint(self) -> Path:
        """Resumable training state (git-ignored; not a DVC output, so a killed run can pick it up)."""
        return self.state_dir / "checkpoints" / "train.pt"

    # --- tool state (git-ignored) ---
    @property
    def evaluate_dir(self) -> Path:
        return self.root / "reports" / "evaluate"

    @property
    def evaluate_metrics(self) -> Path:
        return self.evaluate_dir / "metrics.json"

    @property
    def evaluate_slices(self) -> Path:
        return self.evaluate_dir / "slices.json"

    @property
    def test_predictions(self) -> Path:
        """The judged network's outputs on the test rows, in their order (the gate's paired comparisons
        and monitoring's normal error read them)."""
        return self.evaluate_dir / "test_predictions.parquet"

    @property
    def evaluate_classes(self) -> Path:
        return self.evaluate_dir / "classes.json"

    @property
    def evaluate_plots_dir(self) -> Path:
        return self.evaluate_dir / "plots"

    @property
    def onnx_dir(self) -> Path:
        return self.root / "artifacts" / "onnx"

    @property
    def onnx_file(self) -> Path:
        return self.onnx_dir / "model.onnx"

    @property
    def golden_batch(self) -> Path:
        """Rows the exported model must reproduce: held-out rows and edge cases (see models.export)."""
        return self.onnx_dir / "golden.json"

    @property
    def golden_expected(self) -> Path:
        """The trained model's predictions on the golden batch, with the parity tolerance (written by export)."""
        return self.onnx_dir / "golden_expected.json"

    @property
    def export_report(self) -> Path:
        return self.root / "reports" / "export" / "parity.json"

    @property
    def gate_verdict(self) -> Path:
        """The last `loopline register` verdict (the registry keeps each version's own)."""
        return self.root / "reports" / "gate" / "verdict.json"

    @property
    def state_dir(self) -> Path:
        return self.root / ".state"

    # --- hyperparameter search and cross-validation ---
    @property
    def tuned_params(self) -> Path:
        """The search's winner (or ensemble), as overrides of params.yaml that the train stage applies."""
        return self.root / "tuned.yaml"

    @property
    def tune_storage(self) -> Path:
        """The default Optuna study database (SQLite); tune.storage or $LOOPLINE_TUNE_STORAGE replace it."""
        return self.state_dir / "tune" / "study.db"

    @property
    def tune_reports_dir(self) -> Path:
        """Per study: summary.json, trials.csv, history and importance plots, a DVCLive folder per trial."""
        return self.root / "reports" / "tune"

    @property
    def cv_reports_dir(self) -> Path:
        return self.root / "reports" / "cv"

    # --- served traffic and monitoring (written by the service and the monitoring flow) ---
    @property
    def request_log_dir(self) -> Path:
        """Every served record (serving/request_log.py); $LOOPLINE_REQUEST_LOG moves it."""
        where = Settings.from_env().request_log
        return Path(where) if where and where != "off" else self.root / "data" / "requests"

    @property
    def refused_log_dir(self) -> Path:
        """Requests refused as invalid (400): when, and which fields were wrong (monitoring's input checks)."""
        return self.request_log_dir / "_refused"

    @property
    def ground_truth_dir(self) -> Path:
        """Labels posted to /feedback; $LOOPLINE_GROUND_TRUTH moves it."""
        return Settings.from_env().ground_truth or self.root / "data" / "ground_truth"

    @property
    def harvest_dir(self) -> Path:
        """The harvest's ledger (records harvested) and its quarantined labels, kept with the labels."""
        return self.ground_truth_dir / "_harvest"

    @property
    def monitoring_dir(self) -> Path:
        """One folder per check: summary.json and Evidently's HTML reports."""
        return self.root / "reports" / "monitoring"

    @property
    def evidently_workspace(self) -> Path:
        """The local Evidently workspace: `evidently ui --workspace .state/evidently`."""
        return self.state_dir / "evidently"

    @property
    def incidents(self) -> Path:
        return self.state_dir / "monitoring" / "incidents.json"
