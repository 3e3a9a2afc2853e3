"""Every environment variable Loopline reads, in one place: its name, type, default and meaning.

params.yaml holds the pipeline's knobs (they version with the data); the environment holds what depends
on where Loopline runs: locations, the service's limits, secrets. `Settings.from_env()` reads them all
and names the variable when a value cannot be used; the README's table is generated from this module
(`python -m loopline.settings`), and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loopline.errors import ConfigError

PREFIX = "LOOPLINE_"


def _setting(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Settings:
    """One attribute per variable: the attribute `max_records` is LOOPLINE_MAX_RECORDS."""

    # Where things live.
    root: Path | None = _setting(None, "The project root; default: the working directory (DVC runs stages from there).")
    registry: Path | None = _setting(None, "The model registry; default: `registry/` in the project.")
    request_log: str | None = _setting(
        None, "Where the service logs served records (default `data/requests/`); `off` logs nothing."
    )
    ground_truth: Path | None = _setting(None, "Where labels posted to /feedback go; default: `data/ground_truth/`.")
    outbox: Path | None = _setting(None, "The alert outbox; default: `outbox/` in the project.")
    tune_storage: str | None = _setting(None, "The Optuna study database URL; overrides `tune.storage` in params.yaml.")
    # The HTTP service.
    model_tag: str | None = _setting(
        None,
        "Serve this model from BentoML's store (`loopline:<version>`) instead of the registry's production one, and do not follow promotions.",
    )
    api_key: str | None = _setting(
        None, "When set, /predict and /feedback need `Authorization: Bearer <key>` or `X-API-Key: <key>`."
    )
    max_records: int = _setting(1024, "The most records one request may carry.")
    max_body_bytes: int = _setting(4 * 2**20, "The largest request body, in bytes (413 above it).")
    workers: int = _setting(1, "Server processes, each with its own ONNX Runtime session.")
    ort_threads: int = _setting(
        1, "ONNX Runtime threads per session (the request path runs the model inline; more workers use more cores)."
    )
    access_log: bool = _setting(
        False, "BentoML's access log, a line per request (about 8% of throughput on small requests)."
    )
    request_log_flush_seconds: float = _setting(
        5.0, "How often the request log and the labels are written to Parquet (at most this much is lost in a crash)."
    )
    swap_poll_seconds: float = _setting(
        2.0, "How often the service looks at the production pointer to swap in a promoted model."
    )
    batching: bool = _setting(
        False,
        "Adaptive batching: concurrent JSON /predict requests run through the model in one call (serving/batching.py).",
    )
    batch_max_wait_ms: float | None = _setting(
        None,
        "With batching on, how long a request may wait for others; unset: only those arriving in the same turn of the event loop.",
    )
    # Alert email.
    smtp_block: str | None = _setting(
        None, "A Prefect `EmailServerCredentials` block to send alerts with (instead of the SMTP variables)."
    )
    smtp_host: str | None = _setting(
        None, "The SMTP server; unset: alerts are written as .eml files under `outbox/local/`."
    )
    smtp_port: int | None = _setting(None, "The SMTP port; default: 587 (starttls), 465 (ssl) or 25 (none).")
    smtp_security: str = _setting("starttls", "`starttls`, `ssl` or `none`.")
    smtp_user: str | None = _setting(None, "The SMTP login, if the server needs one.")
    smtp_password: str | None = _setting(None, "Its password.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(variable(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        settings = cls(**values)
        if settings.smtp_security not in ("starttls", "ssl", "none"):
            raise ConfigError(f"{variable('smtp_security')}={settings.smtp_security!r}: expected starttls, ssl or none")
        return settings


def variable(attribute: str) -> str:
    """The environment variable behind a Settings attribute."""
    return PREFIX + attribute.upper()


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind.startswith("int"):
            value: Any = int(raw)
            if value < 0:
                raise ValueError("negative")
            return value
        if kind.startswith("float"):
            value = float(raw)
            if not value > 0:
                raise ValueError("not positive")
            return value
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError("not a yes/no")
            return raw.lower() in ("1", "true", "yes", "on")
        if kind.startswith("Path"):
            return Path(raw)
        if name == "smtp_security":
            return raw.lower()
        return raw
    except ValueError:
        expected = kind.split(" ")[0].replace("Path", "path")
        raise ConfigError(f"{variable(name)}={raw!r}: expected {expected}") from None


def markdown_table() -> str:
    """The README's table of environment variables."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = (
            "" if f.default is None else f"`{str(f.default).lower() if isinstance(f.default, bool) else f.default}`"
        )
        rows.append(f"| `{variable(f.name)}` | {default} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
