"""Alerts through a real SMTP server (aiosmtpd on 127.0.0.1): an outage, STARTTLS and implicit TLS, a
Prefect email block."""

from __future__ import annotations

from email import message_from_bytes

import pytest

from conftest import REPO, free_port
from loopline.config import AlertParams
from monitoring.alerts import Outbox, SmtpSettings, compose


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


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (the SMTP server's), made with openssl."""
    import subprocess

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_alerts_go_out_over_starttls_and_implicit_tls_checking_the_servers_certificate(
    tmp_path, monkeypatch, certificate, security
) -> None:
    import ssl

    from aiosmtpd.controller import Controller

    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    port = free_port()
    inbox = Inbox()
    tls = (
        {"tls_context": server_tls, "require_starttls": True} if security == "starttls" else {"ssl_context": server_tls}
    )
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **tls)
    controller.start()
    try:
        smtp = SmtpSettings.from_env(
            {"LOOPLINE_SMTP_HOST": "127.0.0.1", "LOOPLINE_SMTP_PORT": str(port), "LOOPLINE_SMTP_SECURITY": security}
        )
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
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PYTHONPATH": str(REPO),
    }
    env.pop("PREFECT_API_URL", None)
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        controller.stop()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert [message_from_bytes(m)["Subject"] for m in inbox.messages] == ["[Loopline] through the block"]


def test_without_smtp_the_alert_is_written_as_an_eml_file(tmp_path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    outbox.put(compose("drift", "body", ALERTS))
    delivery = outbox.deliver(None)
    assert len(delivery.written) == 1 and delivery.written[0].parent.name == "local"
    assert message_from_bytes(delivery.written[0].read_bytes())["Subject"] == "[Loopline] drift"
