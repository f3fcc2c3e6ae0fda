"""A real single-node Slurm on localhost, for testing the workflow's SLURM profile.

Debian's slurm-wlm 22.05 with munge, slurmdbd and a private MariaDB for accounting (the executor
plugin reads job states with ``sacct``). Every daemon runs in the foreground as a child process
whose pid is kept, and :meth:`SlurmCluster.stop` ends each of them whatever happened. State,
spool, logs and the database live in a temporary folder; ``SLURM_CONF`` points every client
(sbatch, sacct, the plugin) at this cluster. The job-step executor inside each job drops every
``SLURM_*`` variable before its ``srun``, so the config must also be at Slurm's default path,
``/etc/slurm/slurm.conf``: it is written there only if none exists, and removed again on stop.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sacct"]


class SlurmUnavailable(RuntimeError):
    """Why a real Slurm cannot be stood up on this machine (the test is skipped with it)."""


#: Opt-in for a machine that is not CI: let the Slurm test apt-install the packages above.
OPT_IN = "DIFF_ERANK_INSTALL_SLURM"


def may_install(env: dict[str, str] | None = None) -> bool:
    """System packages are installed only when CI asks (``CI=true``) or the user opts in."""
    env = os.environ if env is None else env
    return env.get("CI", "").lower() in ("true", "1") or env.get(OPT_IN, "") == "1"


def ensure_installed(timeout: int = 600) -> None:
    """Install the Debian packages if a binary is missing, where CI or the user allows it (root, apt)."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if not may_install():
        missing = [b for b in BINARIES if not shutil.which(b)]
        raise SlurmUnavailable(
            f"{', '.join(missing)} not installed; run `{OPT_IN}=1 pytest tests/test_slurm.py` as root "
            f"to let the test apt-install {' '.join(PACKAGES)} (CI does so with CI=true)"
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable("not root: cannot install or run slurm-wlm, munge and mariadb")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("no apt-get: install slurm-wlm, slurmdbd, munge and mariadb-server by hand")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
    ):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if r.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise SlurmUnavailable(f"installed {PACKAGES} but {missing} are still missing")


def _wait(check, what: str, timeout: float = 60.0, procs: list | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for name, p in procs or []:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {what}")
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _answers(sock: Path) -> bool:
    """Whether a server listens on a Unix socket (a stale socket file refuses the connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        try:
            c.connect(str(sock))
        except OSError:
            return False
    return True


class SlurmCluster:
    """``with SlurmCluster(tmp) as cluster:`` gives a running cluster with partitions ``ci`` (CPU jobs)
    and ``ci-gpu`` on the same node, which offers one GPU of type ``fake`` as a GRES (no device
    behind it: enough for Slurm to schedule and account GPU requests)."""

    PARTITION = "ci"
    GPU_PARTITION = "ci-gpu"
    GPU_TYPE = "fake"
    ACCOUNT = "ci"
    CLUSTER = "diff-erank-ci"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.host = socket.gethostname().split(".")[0]
        self.etc = Path("/etc/slurm")
        self.env = {**os.environ, "SLURM_CONF": str(self.etc / "slurm.conf")}
        self.written: list[Path] = []

    # -- configuration -------------------------------------------------------------------------
    def _write_configs(self) -> None:
        r = self.root
        for name in ("slurm.conf", "slurmdbd.conf", "gres.conf"):
            if (self.etc / name).exists():
                raise SlurmUnavailable(f"{self.etc / name} exists: this machine has a Slurm of its own")
        self.etc.mkdir(parents=True, exist_ok=True)
        for d in ("state", "spool", "log", "mysql"):
            (r / d).mkdir(parents=True, exist_ok=True)
        cpus = os.cpu_count() or 2
        gres = f"gpu:{self.GPU_TYPE}:1"
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        tmp_mb = int(shutil.disk_usage("/tmp").free / 2**20 * 0.8)  # node-local disk: sbatch --tmp
        self.written.append(self.etc / "slurm.conf")
        (self.etc / "slurm.conf").write_text(f"""\
ClusterName={self.CLUSTER}
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge=600
DefMemPerCPU=500
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=16819
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageTRES=gres/gpu,gres/gpu:{self.GPU_TYPE}
AccountingStoreFlags=job_comment
GresTypes=gpu
TmpFS=/tmp
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} TmpDisk={tmp_mb} Gres={gres} \
State=UNKNOWN
PartitionName={self.PARTITION} Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName={self.GPU_PARTITION} Nodes={self.host} MaxTime=INFINITE State=UP
""")
        self.written.append(self.etc / "gres.conf")
        # a GPU with no device behind it (Slurm counts a gpu GRES only with a File)
        gpu = f"NodeName={self.host} Name=gpu Type={self.GPU_TYPE} File=/dev/null\n"
        (self.etc / "gres.conf").write_text(gpu)
        dbd = self.etc / "slurmdbd.conf"
        self.written.append(dbd)
        dbd.write_text(f"""\
AuthType=auth/munge
DbdHost={self.host}
DbdAddr=127.0.0.1
DbdPort=16819
SlurmUser=root
PidFile={r}/slurmdbd.pid
LogFile={r}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=13306
StorageUser=root
StorageLoc=slurm_acct_db
""")
        dbd.chmod(0o600)

    # -- daemons -------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, **kw)
        self.procs.append((name, p))
        return p

    def _munge_ok(self) -> bool:
        try:
            enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
            return (
                enc.returncode == 0
                and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=5).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r

    def start(self) -> SlurmCluster:
        self._write_configs()
        r = self.root
        # slurmdbd reaches MariaDB through the default socket (root authenticates by socket)
        Path("/run/mysqld").mkdir(exist_ok=True)
        sock = Path("/run/mysqld/mysqld.sock")
        if sock.exists():
            if _answers(sock):
                raise SlurmUnavailable(f"{sock} exists: another MariaDB/MySQL server runs on this machine")
            sock.unlink()  # left behind by a server that was killed (a test run cut short)
        # munge at its default socket (slurm's auth plugin has that path compiled in), as the munge
        # user, in the foreground; reused if one already answers
        if not self._munge_ok():
            run_dir = Path("/run/munge")
            run_dir.mkdir(exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            self._spawn("munged", ["runuser", "-u", "munge", "--", "munged", "-F", "--force"])
            _wait(self._munge_ok, "munged", procs=self.procs)
        # MariaDB on a private port and socket, root by unix socket
        self._run(
            "mariadb-install-db",
            "--user=root",
            f"--datadir={r}/mysql",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        )
        self._spawn(
            "mariadbd",
            [
                "mariadbd",
                "--user=root",
                f"--datadir={r}/mysql",
                f"--socket={sock}",
                "--port=13306",
                "--bind-address=127.0.0.1",
                f"--pid-file={r}/mariadb.pid",
            ],
        )
        _wait(lambda: _port_open(13306), "mariadbd", procs=self.procs)
        self._spawn("slurmdbd", ["slurmdbd", "-D"])
        _wait(lambda: _port_open(16819), "slurmdbd", timeout=90, procs=self.procs)
        self._run("sacctmgr", "-i", "add", "cluster", self.CLUSTER, check=False)
        self._run("sacctmgr", "-i", "add", "account", self.ACCOUNT, f"cluster={self.CLUSTER}", check=False)
        self._run(
            "sacctmgr",
            "-i",
            "add",
            "user",
            "root",
            f"account={self.ACCOUNT}",
            f"cluster={self.CLUSTER}",
            check=False,
        )
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        _wait(lambda: _port_open(16817), "slurmctld", procs=self.procs)
        self._spawn("slurmd", ["slurmd", "-D"])
        _wait(
            lambda: "idle" in self._run("sinfo", "-h", "-o", "%t", check=False).stdout,
            "an idle node",
            timeout=90,
            procs=self.procs,
        )
        return self

    def stop(self) -> None:
        """End every daemon this cluster started, by pid, youngest first."""
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=15)
        self.procs.clear()
        for f in self.written:
            f.unlink(missing_ok=True)
        self.written.clear()

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries -------------------------------------------------------------------------------
    def accounted_jobs(self) -> list[dict[str, str]]:
        """Jobs in Slurm's accounting database (name, state, exit code)."""
        out = self._run(
            "sacct", "-a", "-X", "-n", "-P", "-S", "2000-01-01", "-o", "JobID,JobName,State,ExitCode"
        ).stdout
        return [
            dict(zip(["id", "name", "state", "exit"], line.split("|"), strict=True))
            for line in out.splitlines()
            if line
        ]

    def requests(self) -> list[dict[str, str]]:
        """What each job asked Slurm for, as accounted: rule (the plugin's comment), partition,
        memory (MB), CPUs and trackable resources (GRES)."""
        out = self._run(
            "sacct",
            "-a",
            "-X",
            "-n",
            "-P",
            "-S",
            "2000-01-01",
            "-o",
            "JobID,Comment,Partition,ReqMem,ReqCPUS,ReqTRES",
        ).stdout
        keys = ["id", "comment", "partition", "mem", "cpus", "tres"]
        return [dict(zip(keys, line.split("|", 5), strict=True)) for line in out.splitlines() if line]

    def tmp_requests(self) -> dict[str, str]:
        """Each job the controller still holds (MinJobAge: 10 minutes after it ends) and the node-local
        disk it asked for (``sbatch --tmp``), e.g. ``{"12": "401M"}``: accounting has no field for it."""
        out = self._run("scontrol", "-o", "show", "job", check=False).stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields.get("MinTmpDiskNode", "0")
        return jobs

    def logs(self) -> str:
        return "\n".join(
            f"== {f.name}\n{f.read_text(errors='replace')[-2000:]}"
            for f in sorted((self.root / "log").glob("*"))
        )
