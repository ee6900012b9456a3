"""A real single-node Slurm on loopback for the tests marked ``slurm`` (Debian 12 packages).

``LocalSlurm().start()`` brings up munged, MariaDB (unix socket only), slurmdbd, slurmctld and
slurmd when no cluster answers yet, and ``stop()`` ends only the daemons it started, by their pid
files. Install the packages first with ``.ci/install_slurm.sh``. By hand:

    python tests/slurm/slurm_cluster.py start|stop|status
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "# written by latentgen tests/slurm/slurm_cluster.py"
ETC = Path("/etc/slurm")
SPOOL = Path("/var/spool/slurm-local")
LOGS = Path("/var/log/slurm")
DB_PASSWORD = "latentgen-local-slurm"  # MariaDB listens on its unix socket only
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")


class SlurmSetupError(RuntimeError):
    pass


def run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise SlurmSetupError(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    return res


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


def _wait(predicate, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    hint = f"\nlast lines of {log}:\n{_tail(log)}" if log else ""
    raise SlurmSetupError(f"{what} did not come up within {timeout:.0f}s{hint}")


def _process_is(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
    return comm.startswith(name[:15]) and state != "Z"


def _pid_alive(pidfile: Path, name: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is ``name`` (never trust a stale file)."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _process_is(pid, name) else None


@dataclass
class Daemon:
    name: str
    pidfile: Path
    log: Path | None = None


@dataclass
class LocalSlurm:
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    started: list[Daemon] = field(default_factory=list)

    # -- queries -------------------------------------------------------------------------------
    @staticmethod
    def packages_missing() -> list[str]:
        missing = []
        for p in PACKAGES:
            res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
            if "install ok installed" not in res.stdout:
                missing.append(p)
        return missing

    @staticmethod
    def responding() -> bool:
        if shutil.which("scontrol") is None:
            return False
        try:
            res = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return res.returncode == 0 and "UP" in res.stdout

    @staticmethod
    def node_ready() -> bool:
        res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        states = res.stdout.split()
        return res.returncode == 0 and bool(states) and all(s in ("idle", "mix", "alloc") for s in states)

    # -- start / stop ----------------------------------------------------------------------------
    def start(self) -> LocalSlurm:
        if self.responding():
            _wait(self.node_ready, "the running Slurm's node", 60)
            return self
        missing = self.packages_missing()
        if missing:
            raise SlurmSetupError(f"Slurm packages missing: {' '.join(missing)}; run `bash .ci/install_slurm.sh` as root")
        if os.geteuid() != 0:
            raise SlurmSetupError("starting the local Slurm needs root (it writes /etc/slurm and starts daemons)")
        self._check_host()
        self._write_configs()
        try:
            self._start_munge()
            self._start_mariadb()
            self._start_slurm()
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End the daemons this object started, newest first; leave everything else alone."""
        for d in reversed(self.started):
            pid = _pid_alive(d.pidfile, d.name)
            if pid is None:
                continue
            os.kill(pid, 15)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _process_is(pid, d.name):
                time.sleep(0.2)
        self.started.clear()

    # -- pieces ----------------------------------------------------------------------------------
    def _check_host(self) -> None:
        try:
            addr = socket.gethostbyname(self.host)
        except OSError:
            addr = None
        if addr != "127.0.0.1":
            raise SlurmSetupError(
                f"host name {self.host!r} resolves to {addr}, not 127.0.0.1: add `127.0.0.1 {self.host}` to /etc/hosts"
            )

    def _write_configs(self) -> None:
        conf = ETC / "slurm.conf"
        if conf.exists() and MARKER not in conf.read_text():
            raise SlurmSetupError(
                f"{conf} exists but was not written by these tests and no Slurm answers `scontrol ping`: "
                "start that cluster, or move the file away to let the tests start their own"
            )
        for d in (ETC, SPOOL / "ctld", SPOOL / "d", LOGS):
            d.mkdir(parents=True, exist_ok=True)
        mem_kb = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")))
        topology = self._topology()
        conf.write_text(f"""{MARKER}
ClusterName=localcluster
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
StateSaveLocation={SPOOL / 'ctld'}
SlurmdSpoolDir={SPOOL / 'd'}
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile={LOGS / 'slurmctld.log'}
SlurmdLogFile={LOGS / 'slurmd.log'}
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName={self.host} NodeAddr=127.0.0.1 NodeHostname={self.host} {topology} RealMemory={int(mem_kb / 1024 * 0.85)} State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        dbd = ETC / "slurmdbd.conf"
        dbd.write_text(f"""{MARKER}
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile={LOGS / 'slurmdbd.log'}
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    @staticmethod
    def _topology() -> str:
        """CPUs/boards/sockets/cores/threads as ``slurmd -C`` sees them (plain CPUs=N reads as N sockets)."""
        first = run(["slurmd", "-C"]).stdout.splitlines()[0].split()
        keys = ("CPUs=", "Boards=", "SocketsPerBoard=", "CoresPerSocket=", "ThreadsPerCore=")
        return " ".join(f for f in first if f.startswith(keys))

    def _spawn(self, daemon: Daemon, cmd: list[str]) -> None:
        """Start a self-daemonising program; remember it only once its pid file names it."""
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            log = f"\nlast lines of {daemon.log}:\n{_tail(daemon.log)}" if daemon.log else ""
            raise SlurmSetupError(f"`{' '.join(cmd)}` failed: {res.stderr.strip()}{log}")
        _wait(lambda: _pid_alive(daemon.pidfile, daemon.name) is not None, daemon.name, 30, daemon.log)
        self.started.append(daemon)

    def _start_munge(self) -> None:
        pidfile = Path("/run/munge/munged.pid")
        if _pid_alive(pidfile, "munged"):
            return
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            raise SlurmSetupError("/etc/munge/munge.key is missing: reinstall munge (`apt-get install --reinstall munge`)")
        self._spawn(Daemon("munged", pidfile, Path("/var/log/munge/munged.log")),
                    ["runuser", "-u", "munge", "--", "munged", "--force"])

    def _start_mariadb(self) -> None:
        pidfile = Path("/run/mysqld/mysqld.pid")
        sock = Path("/run/mysqld/mysqld.sock")
        if not _pid_alive(pidfile, "mariadbd"):
            Path("/run/mysqld").mkdir(exist_ok=True)
            shutil.chown("/run/mysqld", "mysql", "root")
            log = Path("/run/mysqld/mariadb.log")  # a place the mysql user may write
            subprocess.Popen(
                ["mariadbd", "--user=mysql", "--skip-networking", f"--socket={sock}", f"--pid-file={pidfile}",
                 f"--log-error={log}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            daemon = Daemon("mariadbd", pidfile, log)
            _wait(lambda: sock.exists() and _pid_alive(pidfile, "mariadbd") is not None, "mariadbd", 60, log)
            self.started.append(daemon)
        sql = (f"CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '{DB_PASSWORD}';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;")
        run(["mariadb", f"--socket={sock}", "-e", sql])

    def _start_slurm(self) -> None:
        dbd = Daemon("slurmdbd", Path("/run/slurmdbd.pid"), LOGS / "slurmdbd.log")
        if not _pid_alive(dbd.pidfile, dbd.name):
            self._spawn(dbd, ["slurmdbd"])
        _wait(lambda: run(["sacctmgr", "-n", "list", "cluster"], check=False).returncode == 0,
              "slurmdbd (sacctmgr)", 60, dbd.log)
        if "localcluster" not in run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"]).stdout:
            run(["sacctmgr", "-i", "add", "cluster", "localcluster"])
        ctld = Daemon("slurmctld", Path("/run/slurmctld.pid"), LOGS / "slurmctld.log")
        if not _pid_alive(ctld.pidfile, ctld.name):
            self._spawn(ctld, ["slurmctld"])
        _wait(self.responding, "slurmctld", 60, ctld.log)
        slurmd = Daemon("slurmd", Path("/run/slurmd.pid"), LOGS / "slurmd.log")
        if not _pid_alive(slurmd.pidfile, slurmd.name):
            self._spawn(slurmd, ["slurmd"])
        _wait(self.node_ready, "the Slurm node (sinfo idle)", 60, slurmd.log)
        # jobs left over from an earlier, interrupted session on this cluster would hold the cores
        stale = run(["squeue", "-h", "-o", "%i"]).stdout.split()
        if stale:
            run(["scancel", *stale], check=False)


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "status"
    if cmd == "start":
        cluster = LocalSlurm().start()
        print(f"Slurm up on {cluster.host}; started: {', '.join(d.name for d in cluster.started) or 'nothing (already up)'}")
        print("stop it with: python tests/slurm/slurm_cluster.py stop")
    elif cmd == "stop":
        cluster = LocalSlurm(started=[
            Daemon("slurmd", Path("/run/slurmd.pid")), Daemon("slurmctld", Path("/run/slurmctld.pid")),
            Daemon("slurmdbd", Path("/run/slurmdbd.pid")), Daemon("mariadbd", Path("/run/mysqld/mysqld.pid")),
            Daemon("munged", Path("/run/munge/munged.pid")),
        ][::-1])
        cluster.stop()
        print("stopped")
    else:
        print("Slurm responding" if LocalSlurm.responding() else "no Slurm responding")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
