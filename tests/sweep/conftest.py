"""Servers the sweep tests share: a real PostgreSQL, started once per session from the server's
own binaries (installed with apt-get when missing), a throw-away cluster in a temporary folder,
reached through a Unix socket only. Each test takes its own database from it."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PORT = 5439


def _initdb() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _install_postgres() -> str | None:
    """apt-get install postgresql; returns why it could not be done, or None."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "PostgreSQL is not installed and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"apt-get install postgresql failed: {done.stderr[-500:]}"
    return None


def _as_server_user(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: the package's `postgres` user runs it.
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


class PostgresServer:
    def __init__(self, bindir: Path, sock: Path):
        self.bindir, self.sock = bindir, sock

    def database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL (psycopg 3, through the socket)."""
        subprocess.run(
            _as_server_user(
                [str(self.bindir / "createdb"), "-h", str(self.sock), "-p", str(PORT)]
                + ["-U", "postgres", name]
            ),
            check=True,
            capture_output=True,
        )
        return f"postgresql+psycopg://postgres@/{name}?host={self.sock}&port={PORT}"


@pytest.fixture(scope="session")
def postgres():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    bindir = _initdb()
    if bindir is None:
        reason = _install_postgres()
        bindir = _initdb()
        if bindir is None:
            pytest.skip(reason or "PostgreSQL binaries not found after installation")
    # Under /tmp itself: pytest's own tmp folders are private to root, the server is not root.
    root = Path(tempfile.mkdtemp(prefix="lorasweep-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chown(sock, user.pw_uid, user.pw_gid)
    run = lambda *args: subprocess.run(  # noqa: E731
        _as_server_user([str(a) for a in args]), check=True, capture_output=True, text=True
    )
    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-k {sock} -p {PORT} -c listen_addresses='' -c fsync=off"
        run(bindir / "pg_ctl", "-D", data, "-o", options, "-l", root / "server.log", "-w", "start")
        yield PostgresServer(bindir, sock)
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
