"""The monitoring check and the alert outbox, on the real bike data and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from email import message_from_bytes

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from dataprep.sources import load_bike
from loopline.config import AlertParams, MonitorParams
from loopline.schema import load_schema
from monitoring.alerts import Incidents, Outbox, SmtpSettings, compose
from monitoring.drift import check_window, reference_frame, save_check

BIKE = load_schema(REPO / "schemas/bike.yaml")
T0, T1 = datetime(2026, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 8, tzinfo=timezone.utc)
REFERENCE_METRICS = {"mae": 60.0, "rmse": 90.0, "r2": 0.7}


@pytest.fixture(scope="module")
def bike() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows (Jan-Jun 2011) as the reference, with a model that is off by a little noise, and
    rows of the same months as served traffic."""
    data = load_bike().sort_values("timestamp")
    rng = np.random.default_rng(0)
    spring = data[data["timestamp"] < "2011-07-01"].reset_index(drop=True)
    noisy = spring["cnt"].to_numpy(np.float64) + rng.normal(0, 40, len(spring))
    reference = reference_frame(spring, BIKE, noisy.clip(0))
    served = spring.sample(600, random_state=1).reset_index(drop=True)
    served = served.assign(prediction=served["cnt"] + rng.normal(0, 40, len(served)))
    return reference, served


def check(window: pd.DataFrame, reference: pd.DataFrame, **policy):
    return check_window(window, reference, BIKE, MonitorParams(**policy), model_version="v1",
                        reference_metrics=REFERENCE_METRICS, window_start=T0, window_end=T1)


def test_traffic_like_the_training_data_is_not_drift(bike) -> None:
    reference, served = bike
    result, snapshots = check(served.drop(columns="cnt"), reference)
    assert result.verdict == "ok" and result.drift_share < 0.5 and result.performance is None
    assert {c.column for c in result.columns} == {c.name for c in BIKE.features} | {"prediction"}
    assert set(snapshots) == {"drift"}


def test_a_window_too_small_to_judge_says_insufficient_data(bike) -> None:
    reference, served = bike
    result, snapshots = check(served.head(40), reference, min_rows=100)
    assert result.verdict == "insufficient data" and not result.alarming and snapshots == {}
    assert "fewer than the 100 needed" in result.summary()


def test_summer_traffic_against_a_winter_model_is_drift_and_names_the_columns(bike) -> None:
    reference, _ = bike
    data = load_bike()
    summer = data[(data["timestamp"] >= "2012-07-01") & (data["timestamp"] < "2012-07-15")].reset_index(drop=True)
    summer = summer.assign(prediction=summer["cnt"] * 1.8)  # the business grew; the model's outputs move too
    result, _ = check(summer.drop(columns="cnt"), reference)
    assert result.verdict == "drift" and result.alarming
    drifted = {c.column for c in result.drifted}
    assert {"temp", "atemp", "season", "prediction"} <= drifted
    assert f"{len(drifted)} of {len(result.columns)} columns drifted" in result.summary()


def test_per_column_methods_and_the_drift_share_come_from_the_policy(bike) -> None:
    reference, served = bike
    result, _ = check(served.drop(columns="cnt"), reference,
                      drift={"num_method": "ks", "per_column_method": {"hum": "psi"}, "share": 0.9})
    methods = {c.column: c.method for c in result.columns}
    assert methods["temp"] == "ks" and methods["hum"] == "psi" and methods["season"] != "ks"
    assert result.share_threshold == 0.9


def test_labels_that_arrived_show_degraded_performance(bike, tmp_path) -> None:
    reference, served = bike
    window = served.assign(prediction=served["cnt"] + 150)  # every prediction off by 150 rentals
    window.loc[window.index[:20], "cnt"] = np.nan  # labels not arrived yet for some rows
    result, snapshots = check(window, reference, min_labelled_rows=50, max_degradation=0.2)
    assert result.performance is not None and result.performance.labelled_rows == 580
    assert result.performance.metric == "mae" and result.performance.window == pytest.approx(150)
    assert result.performance.degraded and "degraded" in result.verdict
    assert set(snapshots) == {"drift", "performance"}
    files = save_check(result, snapshots, tmp_path)
    assert files["drift"].stat().st_size > 100_000 and "<html" in files["performance"].read_text()[:1000].lower()
    assert '"verdict"' in files["summary"].read_text()


# ------------------------------------------------------------------------------------------ alerts
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.content)
        return "250 OK"


ALERTS = AlertParams(recipients=["oncall@example.test"], sender="loopline@example.test", retry_seconds=[0.05, 0.05])


def test_an_alert_kept_while_smtp_is_down_is_delivered_exactly_once_when_it_is_back(tmp_path) -> None:
    from aiosmtpd.controller import Controller

    port = free_port()
    smtp = SmtpSettings("127.0.0.1", port, security="none", timeout=2)
    outbox = Outbox(tmp_path / "outbox")
    attachment = tmp_path / "summary.json"
    attachment.write_text('{"verdict": "drift"}')
    queued = outbox.put(compose("drift in the traffic of model v1", "temp drifted", ALERTS, [attachment]))

    down = outbox.deliver(smtp, ALERTS.retry_seconds)  # nothing listens on the port
    assert down.pending == [queued] and not down.sent and len(down.errors) == 3 and queued.exists()

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        up = outbox.deliver(smtp, ALERTS.retry_seconds)
        again = outbox.deliver(smtp, ALERTS.retry_seconds)
    finally:
        controller.stop()
    assert len(up.sent) == 1 and not up.pending and not again.sent and not again.pending
    assert len(inbox.messages) == 1
    message = message_from_bytes(inbox.messages[0])
    assert message["Subject"] == "[Loopline] drift in the traffic of model v1"
    assert message["To"] == "oncall@example.test"
    assert [part.get_filename() for part in message.walk() if part.get_filename()] == ["summary.json"]
    assert not list((tmp_path / "outbox" / "pending").glob("*.eml"))


def test_without_smtp_the_alert_is_written_as_an_eml_file(tmp_path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(compose("drift", "body", ALERTS))
    delivery = outbox.deliver(None)
    assert len(delivery.written) == 1 and delivery.written[0].parent.name == "local"
    assert message_from_bytes(delivery.written[0].read_bytes())["Subject"] == "[Loopline] drift"


def test_smtp_settings_come_from_the_environment() -> None:
    assert SmtpSettings.from_env({}) is None
    settings = SmtpSettings.from_env({"LOOPLINE_SMTP_HOST": "mail.example.test", "LOOPLINE_SMTP_SECURITY": "ssl",
                                      "LOOPLINE_SMTP_USER": "u", "LOOPLINE_SMTP_PASSWORD": "p"})
    assert (settings.host, settings.port, settings.security, settings.user) == ("mail.example.test", 465, "ssl", "u")
    with pytest.raises(ValueError, match="LOOPLINE_SMTP_SECURITY"):
        SmtpSettings.from_env({"LOOPLINE_SMTP_HOST": "h", "LOOPLINE_SMTP_SECURITY": "tls1"})


def test_one_alert_per_incident_within_the_cooldown(tmp_path) -> None:
    incidents = Incidents(tmp_path / "incidents.json")
    day = timedelta(hours=24)
    assert incidents.claim("drift", T0, day)
    assert not incidents.claim("drift", T0 + timedelta(hours=5), day)
    assert incidents.claim("degradation", T0 + timedelta(hours=5), day)  # another kind of incident
    assert incidents.claim("drift", T0 + timedelta(hours=25), day)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (the SMTP server's), made with openssl."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_alerts_go_out_over_starttls_and_implicit_tls_checking_the_servers_certificate(
        tmp_path, monkeypatch, certificate, security) -> None:
    import ssl

    from aiosmtpd.controller import Controller

    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port = free_port()
    inbox = Inbox()
    tls = {"tls_context": server_tls, "require_starttls": True} if security == "starttls" else {"ssl_context": server_tls}
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **tls)
    controller.start()
    try:
        smtp = SmtpSettings.from_env({"LOOPLINE_SMTP_HOST": "127.0.0.1", "LOOPLINE_SMTP_PORT": str(port),
                                      "LOOPLINE_SMTP_SECURITY": security})
        outbox = Outbox(tmp_path / "outbox")
        outbox.put(compose(f"over {security}", "body", ALERTS))
        untrusted = outbox.deliver(smtp, [0.01])  # the self-signed certificate is not trusted yet
        assert untrusted.pending and any("CERTIFICATE_VERIFY_FAILED" in str(e) for e in untrusted.errors)
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # the operator's CA bundle, as OpenSSL reads it
        delivered = outbox.deliver(smtp, [0.01])
    finally:
        controller.stop()
    assert len(delivered.sent) == 1 and not delivered.pending
    assert [message_from_bytes(m)["Subject"] for m in inbox.messages] == [f"[Loopline] over {security}"]


def test_smtp_settings_come_from_a_prefect_email_block(tmp_path) -> None:
    """A Prefect EmailServerCredentials block, saved and loaded through Prefect's embedded server, is
    what LOOPLINE_SMTP_BLOCK names; the alert goes out through it."""
    import os
    import subprocess
    import sys

    from aiosmtpd.controller import Controller

    port = free_port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    script = f"""
from prefect_email import EmailServerCredentials
from monitoring.alerts import Outbox, SmtpSettings, compose
from loopline.config import AlertParams
EmailServerCredentials(smtp_server="127.0.0.1", smtp_port={port}, smtp_type="INSECURE").save("loopline-alerts")
smtp = SmtpSettings.from_env({{"LOOPLINE_SMTP_BLOCK": "loopline-alerts"}})
assert (smtp.host, smtp.port, smtp.security) == ("127.0.0.1", {port}, "none"), smtp
outbox = Outbox(__import__("pathlib").Path({str(tmp_path / "outbox")!r}))
outbox.put(compose("through the block", "body", AlertParams(recipients=["oncall@example.test"])))
assert len(outbox.deliver(smtp, [0.1]).sent) == 1
"""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=300)
    finally:
        controller.stop()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert [message_from_bytes(m)["Subject"] for m in inbox.messages] == ["[Loopline] through the block"]
