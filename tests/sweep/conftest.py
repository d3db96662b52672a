"""Servers the sweep tests share, started once per session from Debian's packages (installed
with apt-get when missing): a real PostgreSQL (a throw-away cluster in a temporary folder,
reached through a Unix socket only; each test takes its own database from it) and a
single-node Slurm cluster (slurmctld + slurmd on this machine, munge for authentication)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
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
        self.made = 0

    def database(self, prefix: str) -> str:
        """A new, empty database (``<prefix>_<n>``); its SQLAlchemy URL (psycopg 3, through
        the socket)."""
        self.made += 1
        name = f"{prefix}_{self.made}"
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


# -- a single-node Slurm cluster: slurmctld + slurmd on this machine, munge for auth ----------
SLURM_PORTS = (6917, 6918)


def _install_slurm() -> str | None:
    """apt-get install slurm-wlm munge; returns why it could not be done, or None."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "Slurm is not installed and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"apt-get install slurm-wlm munge failed: {done.stderr[-500:]}"
    return None


def _start_munge() -> int | None:
    """munged, unless one answers already; returns the pid of the one started here."""
    if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
        return None
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    if not Path("/etc/munge/munge.key").exists():
        subprocess.run(["mungekey", "--create"], check=True, capture_output=True)
    subprocess.run(["munged", "--force"], check=True, capture_output=True)  # as root
    return int(Path("/run/munge/munged.pid").read_text())


def _alive(pid: int) -> bool:
    """Running (a daemon's zombie, left for init to reap, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture(scope="session")
def slurm():
    """The environment (SLURM_CONF) of a throw-away single-node Slurm cluster: partition
    `debug` with this machine's CPUs, no accounting database."""
    if os.geteuid() != 0:
        pytest.skip("a Slurm cluster on this machine needs root (slurmd, munged)")
    if not shutil.which("slurmctld"):
        reason = _install_slurm()
        if not shutil.which("slurmctld"):
            pytest.skip(reason or "slurmctld not found after installation")
    root = Path(tempfile.mkdtemp(prefix="lorasweep-slurm-"))
    host, cpus = socket.gethostname(), os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join([
            "ClusterName=lorasweep-test", f"SlurmctldHost={host}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
            f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldPort={SLURM_PORTS[0]}", f"SlurmdPort={SLURM_PORTS[1]}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
            # No cgroups in a container: plain process tracking, no task binding, no accounting.
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "ReturnToService=2",
            f"NodeName={host} CPUs={cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n"
    )  # fmt: skip
    (root / "state").mkdir()
    (root / "spool").mkdir()
    env = {**os.environ, "SLURM_CONF": str(conf)}
    munged = _start_munge()
    try:
        for daemon in (["slurmctld", "-c"], ["slurmd"]):
            subprocess.run([*daemon, "-f", str(conf)], check=True, env=env, capture_output=True)
        deadline = time.monotonic() + 60
        while (
            "idle"
            not in subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout
        ):
            assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        pids = []
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((root / pid_file).read_text()))
        pids += [munged] if munged else []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.2)  # slurmd writes its spool folder on the way out
        shutil.rmtree(root, ignore_errors=True)
