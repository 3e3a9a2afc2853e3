"""Alert emails: composed once, kept in a durable outbox until delivered, one per incident.

SMTP settings come from the environment (LOOPLINE_SMTP_HOST, _PORT, _SECURITY = starttls | ssl | none,
_USER, _PASSWORD) or from a Prefect `EmailServerCredentials` block named by LOOPLINE_SMTP_BLOCK;
recipients, sender, reminder interval and retry waits are in params.yaml (`monitor.alerts`).

The outbox (`outbox/` in the project unless LOOPLINE_OUTBOX says otherwise):
- `pending/`: composed, not yet delivered. Every message is written here first (atomically), so an alert
  is never lost: SMTP down, the process killed, the machine rebooted, it stays until delivered.
- `sent/`: delivered. `deliver()` moves a message here right after the SMTP server accepted it, under a
  file lock, so two deliverers never send the same message. A crash between the server's acceptance and
  the move would send it again on the next delivery, with the same Message-ID (receivers can dedupe).
- `local/`: with no SMTP configured (the embedded default) messages are written here as .eml files,
  which are the delivery; the path is printed.

Which incidents alert, and when again, is the monitoring check's (monitoring.check.plan_alerts: an open
incident alerts again when it gets worse, or as a reminder after `remind_hours`).
"""

from __future__ import annotations

import logging
import mimetypes
import os
import smtplib
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from loopline.atomic import file_lock
from loopline.config import AlertParams
from loopline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    security: str = "starttls"  # starttls | ssl | none
    user: str | None = None
    password: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SmtpSettings | None:
        """The SMTP server from the environment (loopline.settings), or None: no server configured."""
        settings = Settings.from_env(env)
        if settings.smtp_block:
            return cls.from_block(settings.smtp_block)
        if not settings.smtp_host:
            return None
        default_port = {"starttls": 587, "ssl": 465, "none": 25}[settings.smtp_security]
        return cls(
            settings.smtp_host,
            settings.smtp_port or default_port,
            settings.smtp_security,
            settings.smtp_user,
            settings.smtp_password,
        )

    @classmethod
    def from_block(cls, name: str) -> SmtpSettings:
        from prefect_email import EmailServerCredentials

        block = EmailServerCredentials.load(name)
        kind = str(getattr(block.smtp_type, "name", block.smtp_type)).lower()
        security = {"starttls": "starttls", "ssl": "ssl", "insecure": "none"}.get(kind, "starttls")
        return cls(
            block.smtp_server,
            int(block.smtp_port or 465),
            security,
            block.username or None,
            block.password.get_secret_value() if block.password else None,
        )

    def send(self, message: EmailMessage) -> None:
        context = ssl.create_default_context()
        if self.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        with client:
            if self.security == "starttls":
                client.starttls(context=context)
            if self.user:
                client.login(self.user, self.password or "")
            client.send_message(message)


def compose(subject: str, body: str, params: AlertParams, attachments: list[Path] = ()) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[Loopline] {subject}"
    message["From"] = params.sender
    message["To"] = ", ".join(params.recipients)
    message["Date"] = format_datetime(datetime.now(timezone.utc))
    message["Message-ID"] = make_msgid(domain="loopline.local")
    message.set_content(body)
    for path in attachments:
        kind = (mimetypes.guess_type(path.name)[0] or "application/octet-stream").split("/")
        message.add_attachment(path.read_bytes(), maintype=kind[0], subtype=kind[1], filename=path.name)
    return message


@dataclass
class Delivery:
    sent: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    pending: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.pending, self.sent, self.local = self.root / "pending", self.root / "sent", self.root / "local"

    @classmethod
    def for_project(cls, project_root: Path) -> Outbox:
        return cls(Settings.from_env().outbox or Path(project_root) / "outbox")

    def put(self, message: EmailMessage) -> Path:
        """Write the message to pending/ (atomically: a reader never sees half a file)."""
        self.pending.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.pending / f".{name}.tmp"
        tmp.write_bytes(bytes(message))
        os.replace(tmp, self.pending / name)
        return self.pending / name

    def deliver(self, smtp: SmtpSettings | None, retry_seconds: list[float] = (0,), sleep=time.sleep) -> Delivery:
        """Send every pending message, oldest first. Each is tried once and then once after each wait in
        `retry_seconds`; what still fails stays pending for the next delivery. Without SMTP settings,
        messages move to local/ as .eml files."""
        from email import policy
        from email.parser import BytesParser

        result = Delivery()
        with file_lock(self.root / ".lock"):
            for path in sorted(self.pending.glob("*.eml")) if self.pending.is_dir() else []:
                if smtp is None:
                    self.local.mkdir(parents=True, exist_ok=True)
                    os.replace(path, self.local / path.name)
                    result.written.append(self.local / path.name)
                    continue
                message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
                for attempt, wait in enumerate([0.0, *retry_seconds]):
                    if wait:
                        sleep(wait)
                    try:
                        smtp.send(message)
                    except (OSError, smtplib.SMTPException) as exc:
                        error = f"{path.name}: attempt {attempt + 1} to {smtp.host}:{smtp.port} failed: {exc}"
                        log.warning(error)
                        result.errors.append(error)
                        continue
                    self.sent.mkdir(parents=True, exist_ok=True)
                    os.replace(path, self.sent / path.name)
                    result.sent.append(self.sent / path.name)
                    break
                else:
                    result.pending.append(path)
        return result
